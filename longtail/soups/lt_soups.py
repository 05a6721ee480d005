"""LT-Soups (arXiv 2511.10683, METHODS.md 2.4-2.5): subsampled full fine-tunes, soup, re-tuned head.

A pipeline folder holds `plan.yaml`, one run folder per ingredient job
(`ingredients/e{i}_b{k}`), then `soup/` (the merged weights) and `final/` (stage 2).
Every ingredient job is independent and skipped once finished, so jobs can run in
parallel on several GPUs or machines and the merge runs afterwards; an interrupted job run
again continues from its last checkpoint, to the weights of an uninterrupted run. SLURM::

    # 1) ingredients: |F| * K jobs (here F = 0..6, K = 2 -> 14), any order, any machine
    #SBATCH --array=0-13
    longtail soup -m lt_soups -d cifar100_ir100 -b clip_vit_b16 --out runs/lts --job $SLURM_ARRAY_TASK_ID
    # 2) after the array (sbatch --dependency=afterok:<array id>): merge, stage 2, evaluation
    longtail soup -m lt_soups -d cifar100_ir100 -b clip_vit_b16 --out runs/lts --stage finish

`longtail soup -m lt_soups ... --out runs/lts` alone runs every step in sequence.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longtail.errors import ConfigError, DataError
from longtail.io import read_json, read_yaml, write_yaml
from longtail.soups.merge import Coefficients, linear_merge, merge_coefficients, save_state_dict

WEIGHTS = "model.safetensors"
RUNTIME_ONLY = ("device", "precision", "save_every", "keep_checkpoints")  # may differ between jobs


@dataclass
class LTSoupsConfig:
    """LT-Soups hyperparameters (defaults: the public CIFAR-100-LT script, METHODS.md 2.4)."""

    data_spec: str = "synthetic_images"
    data_options: dict[str, Any] = field(default_factory=dict)
    root: str | None = None
    val_split: str | None = None  # a split name; None: first val_per_class test images per class
    val_per_class: int = 10
    backbone: str = "tiny_clip"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    templates: str = "lift"
    scale: float = 30.0  # cosine classifier scale of the LT-Soups code
    exponents: list[int] | None = None  # F; None: 0..ceil(log2 rho); -1 = whole training set
    branches: int = 2  # K (meta_bsz)
    merge: str = "recursive"  # recursive | uniform
    lam: float = 0.7  # merge_lm
    lr: float = 3e-5
    weight_decay: float = 0.01
    batch_size: int = 128
    epochs: int = 10
    min_steps: int = 100
    max_steps: int | None = None  # cap for smoke tests (not in the paper)
    ema_decay: float = 0.99
    n_evals: int = 5
    augment: str = "rrc_flip"
    stage2: bool = True
    stage2_epochs: int = 10
    stage2_cached_features: bool = False  # un-augmented cached features (faster, differs slightly)
    eval_batch_size: int = 256
    num_workers: int = 4  # DataLoader workers decoding images (0: in the main process)
    precision: str = "bf16"  # accelerate mixed precision on CUDA; CPU always fp32
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    save_every: int | None = None  # ingredient checkpoint every N steps (None: at each eval; 0: only at the end)
    keep_checkpoints: bool = False  # keep an ingredient's resume checkpoint once it finished

    def __post_init__(self) -> None:
        if self.merge not in ("recursive", "uniform"):
            raise ConfigError(f"LT-Soups merge must be 'recursive' or 'uniform', got '{self.merge}'")
        if self.branches < 1:
            raise ConfigError(f"branches (K) must be >= 1, got {self.branches}")
        if self.save_every is not None and self.save_every < 0:
            raise ConfigError(f"save_every must be >= 0 steps (0: only at the end), got {self.save_every}")


# ----------------------------------------------------------------------------- subsets


def default_exponents(counts: np.ndarray) -> list[int]:
    """F = {0, ..., ceil(log2 rho)}: the last cap covers (almost) the whole training set."""
    counts = np.asarray(counts)
    return list(range(int(math.ceil(math.log2(counts.max() / counts.min()))) + 1))


def subset_counts(counts: np.ndarray, exponent: int) -> np.ndarray:
    """n'_c = min(n_c, n_min * 2^i); exponent -1 means the whole training set."""
    counts = np.asarray(counts, dtype=np.int64)
    if exponent < 0:
        return counts.copy()
    return np.minimum(counts, int(counts.min()) * 2**exponent)


def subset_indices(labels: np.ndarray, exponents: list[int], exponent: int) -> np.ndarray:
    """Per class n'_c indices uniformly without replacement, RNG seeded with i's position in F."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    if (counts == 0).any():
        raise DataError(f"class {int(np.argmin(counts))} has no training images")
    rng = np.random.default_rng(exponents.index(exponent))
    target = subset_counts(counts, exponent)
    picks = [rng.choice(np.flatnonzero(labels == c), size=int(n), replace=False) for c, n in enumerate(target)]
    return np.sort(np.concatenate(picks))


def ingredient_loss(subset: np.ndarray):
    """CE on a balanced subset, otherwise LA (tau = 1) with the subset's own priors."""
    from longtail.methods.losses import make_loss

    balanced = subset.min() == subset.max()
    return make_loss("ce", subset) if balanced else make_loss("la", subset, tau=1.0)


def soup_coefficients(cfg: LTSoupsConfig, n_exponents: int) -> Coefficients:
    """Weights of theta_0 and of each (exponent, branch) checkpoint, branches averaged first."""
    params = {"lam": cfg.lam} if cfg.merge == "recursive" else {}
    per_exp = merge_coefficients(cfg.merge, n_exponents, cfg.merge == "recursive", **params)
    k = cfg.branches
    return Coefficients(tuple(c / k for c in per_exp.ingredients for _ in range(k)), per_exp.base)


# ----------------------------------------------------------------------------- the pipeline


class LTSoups:
    """The pipeline state of one folder: data, theta_0, jobs; each step is resumable."""

    def __init__(self, cfg: LTSoupsConfig, folder: str | Path) -> None:
        from longtail.data.images import open_images

        self.cfg, self.folder = cfg, Path(folder)
        self.train = open_images(cfg.data_spec, "train", cfg.root, **cfg.data_options)
        test = open_images(cfg.data_spec, "test", cfg.root, **cfg.data_options)
        if cfg.val_split is not None:
            self.val, self.test = open_images(cfg.data_spec, cfg.val_split, cfg.root, **cfg.data_options), test
        else:
            from longtail.data.controlled_cifar import validation_split

            val_idx, test_idx = validation_split(test.labels, cfg.val_per_class)
            self.val, self.test = test.subset(val_idx), test.subset(test_idx)
        self.counts = self.train.class_counts()
        self.exponents = list(cfg.exponents) if cfg.exponents is not None else default_exponents(self.counts)
        self._backbone = None
        self._theta0 = None

    # --- plan and jobs --------------------------------------------------------------------
    def jobs(self) -> list[tuple[int, int]]:
        """(exponent, branch) of every ingredient job, in merge order (ascending b; -1 = all data last)."""
        order = sorted(self.exponents, key=lambda i: math.inf if i < 0 else i)
        return [(i, k) for i in order for k in range(self.cfg.branches)]

    def job_dir(self, exponent: int, branch: int) -> Path:
        return self.folder / "ingredients" / f"e{exponent}_b{branch}"

    def write_plan(self) -> None:
        """Create or check `plan.yaml`; a different existing plan is an error (no mixing)."""
        plan = {"kind": "lt_soups", "exponents": self.exponents, **asdict(self.cfg)}
        plan.pop("progress")
        path = self.folder / "plan.yaml"
        if path.exists():
            old = read_yaml(path)
            diff = sorted(k for k in plan if old.get(k) != plan[k] and k not in RUNTIME_ONLY)
            if diff:
                raise ConfigError(f"{path} was written with other settings ({', '.join(diff)}); use another --out")
            return
        write_yaml(path, plan)

    @property
    def backbone(self):
        if self._backbone is None:
            from longtail.models.backbone import load_backbone

            self._backbone = load_backbone(self.cfg.backbone, **self.cfg.backbone_options)
        return self._backbone

    def zero_shot(self):
        """A fresh copy of theta_0 (built once: text embedding is the costly part)."""
        import copy

        from longtail.soups.ingredient import zero_shot_model

        if self._theta0 is None:
            self._theta0 = zero_shot_model(self.backbone, list(self.train.class_names), self.cfg.templates, self.cfg.scale)
        return copy.deepcopy(self._theta0)

    # --- data plumbing ---------------------------------------------------------------------
    def _decoded(self, dataset):
        from longtail.methods.finetune.augment import DecodedImages, decode_transform

        t = self.backbone.transform
        side = max(t.crop_size) if t.crop_size else int(t.size)
        return DecodedImages(dataset, decode_transform(side, t.mean, t.std))

    def _augment(self, name: str):
        from longtail.methods.finetune.augment import train_augmentation

        t = self.backbone.transform
        side = max(t.crop_size) if t.crop_size else int(t.size)
        return train_augmentation(name, side, t.mean, t.std, scale=(0.08, 1.0))

    def _spec(self, n_train: int, seed: int, epochs: int):
        from longtail.soups.ingredient import TrainSpec, ingredient_steps

        c = self.cfg
        steps = ingredient_steps(n_train, c.batch_size, epochs, c.min_steps)
        steps = min(steps, c.max_steps) if c.max_steps else steps
        return TrainSpec(steps, lr=c.lr, weight_decay=c.weight_decay, batch_size=c.batch_size,
                         ema_decay=c.ema_decay, n_evals=c.n_evals, seed=seed)

    def _train(self, model, trainable, train_set, loss, prepare, prepare_eval, val_set, spec, **resume):
        from longtail.device import resolve_device
        from longtail.soups.ingredient import train_with_selection, validator

        dev = resolve_device(self.cfg.device)
        validate = validator(prepare_eval, val_set, self.cfg.eval_batch_size, dev, self.cfg.num_workers)
        return train_with_selection(model, trainable, train_set, loss, prepare, validate, spec,
                                    self.cfg.precision, self.cfg.device, self.cfg.progress, self.cfg.num_workers, **resume)

    # --- stage 1 -----------------------------------------------------------------------------
    def run_job(self, exponent: int, branch: int, on_step: Callable[[int], None] | None = None) -> Path:
        """Train one ingredient into its run folder: skipped when finished, resumed when interrupted."""
        from longtail.methods.finetune.checkpoint import CHECKPOINTS
        from longtail.runs import create_run

        folder = self.job_dir(exponent, branch)
        if _finished(folder):
            return folder
        idx = subset_indices(self.train.labels, self.exponents, exponent)
        sub = self.train.subset(idx)
        counts = sub.class_counts()
        seed = self.cfg.seed + 1000 * self.exponents.index(exponent) + branch
        spec = self._spec(len(sub), seed, self.cfg.epochs)
        config = {"label": f"ingredient b=2^{exponent} #{branch}", "exponent": exponent, "branch": branch,
                  "subset_counts": counts.tolist(), "steps": spec.steps,
                  "loss": "ce" if counts.min() == counts.max() else "la", "pipeline": str(self.folder)}
        # unstaged: the folder (and its checkpoints) survives an interruption; status.json says when it is done
        with create_run(folder, "lt_soups_ingredient", config, seed=seed, device=self.cfg.device,
                        staged=False, resume=True) as run:
            model = self.zero_shot()
            aug, plain = self._augment(self.cfg.augment), self._augment("none")
            state, log = self._train(model, list(model.parameters()), self._decoded(sub), ingredient_loss(counts),
                                     aug, plain, self._decoded(self.val), spec, checkpoint_dir=run.dir,
                                     save_every=self.cfg.save_every, on_step=on_step)
            run.write_json("train_log.json", log)
            run.write_json("data_stats.json", _stats(counts, self.train.class_names))
            metrics = self.evaluate_state(state)
            save_state_dict(_complete(state, model), run.path(WEIGHTS))
            run.finish(metrics)
        if not self.cfg.keep_checkpoints:
            shutil.rmtree(folder / CHECKPOINTS, ignore_errors=True)
        return folder

    # --- soup and stage 2 ------------------------------------------------------------------------
    def soup(self) -> dict[str, torch.Tensor]:
        """Merge the finished ingredients with theta_0 (streamed from disk)."""
        missing = [f"e{i}_b{k}" for i, k in self.jobs() if not _finished(self.job_dir(i, k))]
        if missing:
            raise DataError(f"{self.folder}: ingredient jobs not finished: {', '.join(missing)}")
        coefs = soup_coefficients(self.cfg, len(self.exponents))
        base = _complete({}, self.zero_shot()) if coefs.base else None
        files = [self.job_dir(i, k) / WEIGHTS for i, k in self.jobs()]
        return linear_merge(files, coefs, base)

    def stage2(self, soup: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[dict]]:
        """Re-train only the classifier rows on the full data with LA (full-data priors)."""
        from longtail.methods.losses import make_loss
        from longtail.soups.ingredient import predict

        model = self.zero_shot()
        model.load_state_dict(soup)
        model.requires_grad_(False)
        model.head.weight.requires_grad_(True)
        loss = make_loss("la", self.counts, tau=1.0)
        spec = self._spec(len(self.train), self.cfg.seed + 7, self.cfg.stage2_epochs)
        plain = self._augment("none")
        if not self.cfg.stage2_cached_features:
            state, log = self._train(model, [model.head.weight], self._decoded(self.train), loss,
                                     self._augment(self.cfg.augment), plain, self._decoded(self.val), spec)
        else:  # frozen encoder: features of un-augmented images, computed once
            from longtail.device import resolve_device

            dev = resolve_device(self.cfg.device)
            model.to(dev).eval()
            feats = [predict(lambda x: model.features(plain(x)), self._decoded(d), self.cfg.eval_batch_size, dev,
                             self.cfg.num_workers)
                     for d in (self.train, self.val)]
            sets = [torch.utils.data.TensorDataset(torch.from_numpy(f), torch.from_numpy(y)) for f, y in feats]
            cfg_workers, self.cfg.num_workers = self.cfg.num_workers, 0  # in-memory tensors
            try:
                state, log = self._train(model.head, [model.head.weight], sets[0], loss, lambda x: x,
                                         lambda x: x, sets[1], spec)
            finally:
                self.cfg.num_workers = cfg_workers
            state = {f"head.{k}": v for k, v in state.items()}
        out = {k: v.clone() for k, v in soup.items()}
        out["head.weight"] = state["head.weight"].to(soup["head.weight"].dtype)
        return out, log

    def evaluate_state(self, state: dict[str, torch.Tensor], split: str = "test") -> dict[str, Any]:
        """Metrics (all / many / medium / few, ...) of a state dict on the test (or val) split."""
        from longtail.device import resolve_device
        from longtail.eval.metrics import evaluate
        from longtail.soups.ingredient import predict

        dev = resolve_device(self.cfg.device)
        model = self.zero_shot()
        model.load_state_dict(state, strict=False)
        model.to(dev).eval()
        plain = self._augment("none").to(dev)
        logits, labels = predict(lambda x: model(plain(x)), self._decoded(getattr(self, split)),
                                 self.cfg.eval_batch_size, dev, self.cfg.num_workers)
        metrics = evaluate(logits, labels, self.counts, class_names=list(self.train.class_names),
                           group_counts=getattr(self.train, "group_counts", None))
        return {**metrics, "head_tail_ratio": _stats(self.counts, self.train.class_names)["head_tail_ratio"]}


def _finished(folder: Path) -> bool:
    """An ingredient job is done once its run recorded status 'finished' (weights and metrics written)."""
    status = folder / "status.json"
    return status.is_file() and read_json(status).get("status") == "finished"


def _complete(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's full state dict with `state`'s tensors substituted (float32 master weights)."""
    full = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {k: state.get(k, v).to(v.dtype) if v.is_floating_point() else v for k, v in full.items()}


def _stats(counts: np.ndarray, names) -> dict[str, Any]:
    from longtail.data.stats import class_stats

    return class_stats(counts, list(names)).to_dict()


STAGES = ("all", "prepare", "ingredients", "finish")


def run_lt_soups(cfg: LTSoupsConfig, folder: str | Path, job: int | None = None, stage: str = "all") -> Path:
    """Run LT-Soups in `folder`: one job (index into `jobs()`), or a stage, or everything.

    Stages: prepare (plan.yaml), ingredients (every unfinished job), finish (soup, stage 2,
    evaluation and the comparison of ingredients vs soup); 'all' does the three in turn.
    """
    if stage not in STAGES:
        raise ConfigError(f"unknown LT-Soups stage '{stage}'; choose from: {', '.join(STAGES)}")
    pipe = LTSoups(cfg, folder)
    pipe.write_plan()
    jobs = pipe.jobs()
    if job is not None:
        if not 0 <= job < len(jobs):
            raise ConfigError(f"job index {job} out of range: this plan has {len(jobs)} jobs (0..{len(jobs) - 1})")
        return pipe.run_job(*jobs[job])
    if stage in ("all", "ingredients"):
        for i, k in jobs:
            pipe.run_job(i, k)
    if stage in ("all", "finish"):
        return finish(pipe)
    return pipe.folder


def finish(pipe: LTSoups) -> Path:
    """Soup -> `soup/`, stage 2 -> `final/`, and `comparison.json` / `comparison.html`."""
    from longtail.eval.report import write_comparison_report
    from longtail.io import read_json, write_json
    from longtail.runs import create_run

    coefs = soup_coefficients(pipe.cfg, len(pipe.exponents))
    names = [f"e{i}_b{k}" for i, k in pipe.jobs()]
    soup = pipe.soup()
    runs = [pipe.job_dir(i, k) for i, k in pipe.jobs()]
    soup_dir = pipe.folder / "soup"
    if not (soup_dir / WEIGHTS).exists():
        config = {"label": f"soup ({pipe.cfg.merge})", "merge": pipe.cfg.merge, "lam": pipe.cfg.lam,
                  "ingredients": names, "weights": list(coefs.ingredients), "base_weight": coefs.base}
        with create_run(soup_dir, "lt_soups_soup", config, seed=pipe.cfg.seed) as run:
            run.write_json("data_stats.json", _stats(pipe.counts, pipe.train.class_names))
            save_state_dict(soup, run.path(WEIGHTS))
            run.finish(pipe.evaluate_state(soup))
    runs.append(soup_dir)
    if pipe.cfg.stage2:
        final_dir = pipe.folder / "final"
        if not (final_dir / WEIGHTS).exists():
            config = {"label": "LT-Soups (soup + stage 2)", "cached_features": pipe.cfg.stage2_cached_features}
            with create_run(final_dir, "lt_soups_final", config, seed=pipe.cfg.seed) as run:
                final, log = pipe.stage2(soup)
                run.write_json("train_log.json", log)
                run.write_json("data_stats.json", _stats(pipe.counts, pipe.train.class_names))
                save_state_dict(final, run.path(WEIGHTS))
                run.finish(pipe.evaluate_state(final))
        runs.append(final_dir)
    keys = ("all", "class_mean", "many", "medium", "few", "head_tail_ratio")
    table = [{"name": r.name if r.parent.name != "ingredients" else f"ingredient {r.name}",
              **{k: read_json(r / "metrics.json").get(k) for k in keys}} for r in runs]
    write_json(pipe.folder / "comparison.json", table)
    write_comparison_report(runs, pipe.folder / "comparison.html", title="LT-Soups: ingredients vs soup")
    return pipe.folder
