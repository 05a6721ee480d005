"""LT-Soups (arXiv 2511.10683, docs/methods.md §2.4-2.5): subsampled fine-tunes, soup, re-tuned head.

A pipeline folder holds `plan.yaml`, one fit run per ingredient job
(`ingredients/e{i}_b{k}`: fine-tuning (`adapter`, full by default) of the balanced subset
n'_c = min(n_c, n_min 2^i)),
then `soup/` (a soup run of those fit runs, loadable like one) and `final/` (stage 2: a fit
run that re-tunes the classifier of the soup on the whole training set). Everything trains
through the fine-tuning engine (`longtail.methods.finetune`). Every ingredient job is
independent and skipped once finished, so jobs run in parallel on several GPUs or machines
and the merge runs afterwards; an interrupted job run again continues from its last
checkpoint to the weights of an uninterrupted run. With `adapter=partial` and
`prefix_cache=auto` every ingredient trains from one frozen-prefix cache entry (flip views do
not depend on the ingredient's seed) and stage 2 from the soup's block-L states: the CPU /
CNN recipe (`benchmarks/real_finetune.py`). SLURM, CIFAR-100-LT (rho = 100, so
F = 0..6) with K = 2 branches, |F| * K = 14 jobs::

    #SBATCH --array=0-13
    longtail lt-soups -d cifar100_ir100 -b clip_vit_b16 --out runs/lts --job $SLURM_ARRAY_TASK_ID
    # after the array (sbatch --dependency=afterok:<array id>): merge, stage 2, evaluation
    longtail lt-soups -d cifar100_ir100 -b clip_vit_b16 --out runs/lts --stage finish

`longtail lt-soups -d ... -b ... --out runs/lts` alone runs every step in sequence.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longtail.config import apply_overrides
from longtail.errors import ConfigError, DataError
from longtail.io import read_json, read_yaml, write_yaml
from longtail.methods.finetune.config import RUNTIME_KEYS, FitConfig, migrate_saved
from longtail.methods.finetune.data import subset_counts
from longtail.methods.finetune.presets import METHOD_PRESETS
from longtail.soups.merge import Coefficients, merge_coefficients

STAGES = ("all", "prepare", "ingredients", "finish")
# FitConfig keys the plan sets for each job (docs/methods.md §2.4), so they are no LT-Soups
# settings: the step budget T_i and its warmup, the loss (CE on a balanced subset, else LA), the
# subset, stage 2's start weights, provenance and the method name
PER_JOB = ("method", "steps", "warmup_steps", "warmup_epochs", "loss", "loss_options", "balance_exponent",
           "subset_seed", "init_from", "origin")
PLAN_FORMAT = 3  # plan.yaml: 3 adds val_rule; 2 records every LTSoupsConfig key; 1 (no format_version) only the old class's


@dataclass
class Pipeline:
    """LT-Soups' own settings (docs/methods.md §2.4-2.5); `LTSoupsConfig` adds the fine-tuning ones."""

    exponents: list[int] | None = None  # F; None: 0..floor(log2 rho); -1 = whole training set
    branches: int = 2  # K (meta_bsz)
    merge: str = "recursive"  # recursive | uniform
    lam: float = 0.7  # merge_lm
    min_steps: int = 100  # T_i is at least this
    max_steps: int | None = None  # cap for smoke tests (not in the paper)
    stage2: bool = True
    stage2_epochs: int = 10
    stage2_lr: float | None = None  # None: lr (the paper uses one); set it when lr was raised for short ingredient runs

    def __post_init__(self) -> None:
        if self.merge not in ("recursive", "uniform"):
            raise ConfigError(f"LT-Soups merge must be 'recursive' or 'uniform', got '{self.merge}'")
        if self.branches < 1:
            raise ConfigError(f"branches (K) must be >= 1, got {self.branches}")
        if self.exponents is not None and (not self.exponents or len(set(self.exponents)) != len(self.exponents)):
            raise ConfigError(f"exponents must be a non-empty list without repeats, got {self.exponents}")
        if self.stage2_lr is not None and not self.stage2_lr > 0:
            raise ConfigError(f"stage2_lr must be > 0 (or null: lr), got {self.stage2_lr}")
        if self.min_steps < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise ConfigError("min_steps and max_steps must be >= 1")
        fit_config(self, steps=1, seed=0, loss="ce")  # every name and range of the fit config


def _recipe_fields() -> list[tuple[str, Any, Any]]:
    """Every FitConfig field but PER_JOB, defaulting to the `lt_soups` method preset (the recipe)."""
    recipe = apply_overrides(FitConfig(method="lt_soups"), METHOD_PRESETS.get("lt_soups"))
    hints = typing.get_type_hints(FitConfig)
    out = []
    for f in dataclasses.fields(FitConfig):
        if f.name not in PER_JOB:
            value = getattr(recipe, f.name)
            default = dataclasses.field(default_factory=lambda v=value: copy.deepcopy(v)) \
                if isinstance(value, (dict, list)) else dataclasses.field(default=value)
            out.append((f.name, hints[f.name], default))
    return out


# LTSoupsConfig: the `Pipeline` fields, then FitConfig's fields (but PER_JOB) with the lt_soups
# preset's values as defaults. Derived, not copied: a new FitConfig field is an LT-Soups key at once,
# and every default that differs from `fit`'s is stated once, in presets.METHOD_PRESETS["lt_soups"].
LTSoupsConfig = dataclasses.make_dataclass("LTSoupsConfig", _recipe_fields(), bases=(Pipeline,), namespace={
    "__module__": __name__,
    "__doc__": "LT-Soups' settings: the Pipeline fields and the ingredients' fine-tuning recipe "
               "(FitConfig's fields but PER_JOB, defaults: the lt_soups method preset).",
    "OPTIONS_OF": {k: v for k, v in FitConfig.OPTIONS_OF.items() if k not in PER_JOB},  # config.apply_overrides
})


def valid_keys() -> list[str]:
    """The KEY=VALUE keys of `longtail lt-soups`."""
    return [f.name for f in dataclasses.fields(LTSoupsConfig)]


def build_config(dataset: str, backbone: str, overrides: dict[str, Any] | None = None) -> LTSoupsConfig:
    """LTSoupsConfig from -d/-b: the fine-tuning keys through the layers of `fit -m lt_soups`
    (dataset settings, backbone preset, the lt_soups preset and its per-dataset entry, the
    overrides), the pipeline keys beside them; checked before any data is read."""
    from longtail.methods.finetune.presets import build_config as fit_build_config

    overrides = dict(overrides or {})
    heads = {k: k.split(".")[0] for k in overrides}
    unknown = sorted(k for k, head in heads.items() if head not in valid_keys())
    if unknown:
        why = "set per job by the LT-Soups plan" if heads[unknown[0]] in PER_JOB else "unknown config key"
        raise ConfigError(f"'{unknown[0]}': {why}; valid keys: {', '.join(valid_keys())}")
    own = {f.name for f in dataclasses.fields(Pipeline)}
    fit = fit_build_config(dataset, backbone, "lt_soups", {k: v for k, v in overrides.items() if heads[k] not in own})
    recipe = {k: v for k, v in fit.to_dict().items() if k not in PER_JOB}
    return apply_overrides(LTSoupsConfig(**recipe), {k: v for k, v in overrides.items() if heads[k] in own})


def migrate_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """A plan.yaml dict of any format in the current one (a migration on read). Format 1 recorded
    only the old LTSoupsConfig's fields; what it meant for the others: the values its
    `fit_config` hard-coded, its own defaults where they differed from fit's, else fit's.
    Formats 1 and 2 predate val_rule (`finetune.config.migrate_saved`)."""
    version = plan.get("format_version", 1)
    if not isinstance(version, int) or version > PLAN_FORMAT:
        raise ConfigError(f"plan.yaml format {version!r} is newer than this longtail's ({PLAN_FORMAT})")
    if version == PLAN_FORMAT:
        return dict(plan)
    if version == 2:
        return {**migrate_saved(plan), "format_version": PLAN_FORMAT}
    implied = {"optimizer": "adamw", "lr_schedule": "cosine", "schedule_unit": "step", "warmup_start_factor": 1e-6,
               "final_lr_fraction": 0.1, "val_per_class": 10, "adapter": "full", "scale": 30.0, "lr": 3e-5,
               "weight_decay": 0.01, "ema_decay": 0.99, "n_evals": 5, "precision": "bf16", "keep_checkpoints": False}
    defaults = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                for cls in (FitConfig, Pipeline) for f in dataclasses.fields(cls)}
    filled = {k: implied.get(k, defaults[k]) for k in valid_keys() if k != "val_rule"}
    return {"val_rule": defaults["val_rule"], **migrate_saved({**filled, **plan}), "format_version": PLAN_FORMAT}


# ----------------------------------------------------------------------------- the recipe


def default_exponents(counts: np.ndarray) -> list[int]:
    """F = {0, ..., floor(log2 rho)} (the authors' script: 0..6 for rho = 100)."""
    counts = np.asarray(counts)
    rho = counts.max() / counts.min()
    return list(range(int(math.floor(math.log2(rho) + 1e-9)) + 1))


def ingredient_steps(subset_size: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """T_i = epochs * (floor(|subset| / batch) + 1), at least `min_steps` (docs/methods.md §2.4)."""
    return max(epochs * (subset_size // batch_size + 1), min_steps)


def warmup_steps(steps: int) -> int:
    """w = max(20, floor(0.01 T)), never more than T - 1."""
    return max(min(max(20, int(0.01 * steps)), steps - 1), 0)


def soup_coefficients(cfg: LTSoupsConfig, n_exponents: int) -> Coefficients:
    """Weights of theta_0 and of each (exponent, branch) checkpoint, branches averaged first."""
    params = {"lam": cfg.lam} if cfg.merge == "recursive" else {}
    per_exp = merge_coefficients(cfg.merge, n_exponents, cfg.merge == "recursive", **params)
    k = cfg.branches
    return Coefficients(tuple(c / k for c in per_exp.ingredients for _ in range(k)), per_exp.base)


def fit_config(cfg: LTSoupsConfig, steps: int, seed: int, loss: str, **fields: Any) -> FitConfig:
    """The FitConfig of one LT-Soups training: the recipe `cfg` holds, plus what the plan sets per job
    (`fields` override it: stage 2's adapter, lr, start weights)."""
    values = {f.name: copy.deepcopy(getattr(cfg, f.name)) for f in dataclasses.fields(FitConfig)
              if f.name not in PER_JOB}
    values.update(method="lt_soups", steps=steps, warmup_steps=warmup_steps(steps), seed=seed, loss=loss,
                  loss_options={"tau": 1.0} if loss == "la" else {})
    values.update(fields)
    return FitConfig(**values)


# ----------------------------------------------------------------------------- the pipeline


class LTSoups:
    """The pipeline of one folder: training counts, F, the jobs' fit configs; each step resumable."""

    def __init__(self, cfg: LTSoupsConfig, folder: str | Path, report: bool = True) -> None:
        from longtail.data.open_images import open_images

        self.cfg, self.folder, self.report = cfg, Path(folder), report
        train = open_images(cfg.dataset, "train", cfg.root, **cfg.data_options)
        self.counts = train.class_counts()
        self.exponents = list(cfg.exponents) if cfg.exponents is not None else default_exponents(self.counts)

    def jobs(self) -> list[tuple[int, int]]:
        """(exponent, branch) of every ingredient job, in merge order (ascending b; -1 = all data last)."""
        order = sorted(self.exponents, key=lambda i: math.inf if i < 0 else i)
        return [(i, k) for i in order for k in range(self.cfg.branches)]

    def job_dir(self, exponent: int, branch: int) -> Path:
        return self.folder / "ingredients" / f"e{exponent}_b{branch}"

    def write_plan(self) -> None:
        """Create or check `plan.yaml`; a different existing plan is an error (no mixing)."""
        plan = {"kind": "lt_soups", "format_version": PLAN_FORMAT, "exponents": self.exponents, **asdict(self.cfg)}
        path = self.folder / "plan.yaml"
        if path.exists():
            old = migrate_plan(read_yaml(path))
            defaults = asdict(LTSoupsConfig(dataset=self.cfg.dataset, backbone=self.cfg.backbone))
            diff = sorted(k for k in plan if old.get(k, defaults.get(k)) != plan[k] and k not in RUNTIME_KEYS)
            if diff:
                raise ConfigError(f"{path} was written with other settings ({', '.join(diff)}); use another --out")
            return
        write_yaml(path, plan)

    def _steps(self, n_train: int, epochs: int) -> int:
        c = self.cfg
        steps = ingredient_steps(n_train, c.batch_size, epochs, c.min_steps)
        return min(steps, c.max_steps) if c.max_steps else steps

    def ingredient_config(self, exponent: int, branch: int) -> FitConfig:
        """Ingredient (i, k): LA (CE when balanced) on subset i drawn with seed = i's position in F."""
        position = self.exponents.index(exponent)
        sub = subset_counts(self.counts, exponent)
        return fit_config(self.cfg, self._steps(int(sub.sum()), self.cfg.epochs),
                          seed=self.cfg.seed + 1000 * position + branch,
                          loss="ce" if sub.min() == sub.max() else "la",
                          balance_exponent=None if exponent < 0 else exponent, subset_seed=position,
                          origin={"pipeline": str(self.folder), "exponent": exponent, "branch": branch,
                                  "label": f"ingredient b=2^{exponent} #{branch}"})

    def stage2_config(self) -> FitConfig:
        """Stage 2: only the classifier, from the soup, LA with the full-data priors."""
        return fit_config(self.cfg, self._steps(int(self.counts.sum()), self.cfg.stage2_epochs),
                          seed=self.cfg.seed + 7, loss="la", adapter="none", adapter_options={},
                          sampler="random", sampler_options={},
                          lr=self.cfg.lr if self.cfg.stage2_lr is None else self.cfg.stage2_lr,
                          init_from=str(self.folder / "soup"),
                          method="lt_soups_stage2",
                          origin={"pipeline": str(self.folder), "label": "LT-Soups (soup + stage 2)"})

    def run_job(self, exponent: int, branch: int, on_step=None) -> Path:
        """Train one ingredient fit run: skipped when finished, resumed when interrupted."""
        from longtail.methods.finetune import fit

        folder = self.job_dir(exponent, branch)
        if not _finished(folder):
            fit(self.ingredient_config(exponent, branch), out=folder,
                resume=(folder / "config.yaml").is_file(), on_step=on_step, report=self.report)
        return folder

    def soup(self):
        """Merge the finished ingredients with theta_0 (streamed from disk)."""
        from longtail.methods.finetune import zero_shot_weights
        from longtail.methods.finetune.checkpoint import weights_path
        from longtail.soups.merge import linear_merge

        missing = [f"e{i}_b{k}" for i, k in self.jobs() if not _finished(self.job_dir(i, k))]
        if missing:
            raise DataError(f"{self.folder}: ingredient jobs not finished: {', '.join(missing)}")
        coefs = soup_coefficients(self.cfg, len(self.exponents))
        first = self.ingredient_config(*self.jobs()[0])
        base = zero_shot_weights(first, _class_names(self.job_dir(*self.jobs()[0]))) if coefs.base else None
        return linear_merge([weights_path(self.job_dir(i, k)) for i, k in self.jobs()], coefs, base), coefs


def _class_names(run_dir: Path) -> list[str]:
    return read_json(run_dir / "classes.json")["class_names"]


def _finished(folder: Path) -> bool:
    """A job is done once its run recorded status 'finished' (weights and metrics written)."""
    status = folder / "status.json"
    return status.is_file() and read_json(status).get("status") == "finished"


def run_lt_soups(cfg: LTSoupsConfig, folder: str | Path, job: int | None = None, stage: str = "all",
                 report: bool = True) -> Path:
    """Run LT-Soups in `folder`: one job (index into `jobs()`), or a stage, or everything
    (report=False: no run's report.html and no comparison.html, as `--no-report`).

    Stages: prepare (plan.yaml), ingredients (every unfinished job), finish (soup, stage 2,
    evaluation and the comparison of ingredients vs soup); 'all' does the three in turn.
    """
    if stage not in STAGES:
        raise ConfigError(f"unknown LT-Soups stage '{stage}'; choose from: {', '.join(STAGES)}")
    pipe = LTSoups(cfg, folder, report)
    jobs = pipe.jobs()
    if job is not None and not 0 <= job < len(jobs):
        raise ConfigError(f"job index {job} out of range: this plan has {len(jobs)} jobs (0..{len(jobs) - 1})")
    pipe.write_plan()
    if job is not None:
        return pipe.run_job(*jobs[job])
    if stage in ("all", "ingredients"):
        for i, k in jobs:
            pipe.run_job(i, k)
    if stage in ("all", "finish"):
        return finish(pipe)
    return pipe.folder


def finish(pipe: LTSoups) -> Path:
    """Soup -> `soup/` (a soup run), stage 2 -> `final/` (a fit run), comparison.json / .html."""
    from longtail.eval.report import write_comparison_report
    from longtail.io import write_json
    from longtail.methods.finetune import fit
    from longtail.soups.soup_run import row, write_soup_run

    runs = [pipe.job_dir(i, k) for i, k in pipe.jobs()]
    soup_dir = pipe.folder / "soup"
    if not _finished(soup_dir):
        state, coefs = pipe.soup()
        config = {"label": f"soup ({pipe.cfg.merge})", "method": pipe.cfg.merge, "lam": pipe.cfg.lam,
                  "ingredients": [str(r) for r in runs], "weights": list(coefs.ingredients),
                  "base": "zero-shot" if coefs.base else None, "base_weight": coefs.base}
        write_soup_run(soup_dir, state, runs[0], config, device=pipe.cfg.device, train_counts=True,
                       report=pipe.report)
    runs.append(soup_dir)
    if pipe.cfg.stage2:
        final_dir = pipe.folder / "final"
        if not _finished(final_dir):
            fit(pipe.stage2_config(), out=final_dir, resume=(final_dir / "config.yaml").is_file(), report=pipe.report)
        runs.append(final_dir)
    table = [row(r.name if r.parent.name != "ingredients" else f"ingredient {r.name}", read_json(r / "metrics.json"))
             for r in runs]
    write_json(pipe.folder / "comparison.json", table)
    if pipe.report:
        write_comparison_report(runs, pipe.folder / "comparison.html", title="LT-Soups: ingredients vs soup")
    return pipe.folder
