"""A whole fine-tuning run: run folder, training (resumable), final weights, metrics, report.

Files of a fit run: config.yaml, env.json, status.json, data_stats.json (what was trained
on), classes.json (class names, full training counts, groups), model.safetensors +
model_config.json (`FineTuneModel.weights()` and the input spec; the FitConfig that rebuilds the
model is config.yaml, read by --resume and by evaluation alike),
metrics.json, per_class.csv, report.html, and checkpoints/ while (or, with
keep_checkpoints, after) it runs; with log_with, tracking/ (the tracker's logs) and tracking.json
(where they went).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from longtail.errors import ConfigError
from longtail.methods.finetune import checkpoint as ckpt
from longtail.methods.finetune.config import RUNTIME_KEYS, FitConfig, config_from_dict
from longtail.methods.finetune.engine import FitResult, build, make_accelerator, train_loop
from longtail.methods.finetune.loading import CLASSES, evaluate_model

KIND = "fit"
RESUME_SAFE_KEYS = RUNTIME_KEYS  # the name `commands/fit.py` imports


def config_from_run(run_dir: str | Path) -> FitConfig:
    """The FitConfig a fit run folder was made with (ConfigError if it is another kind of run)."""
    from longtail.runs import load_run

    config = load_run(run_dir)["config"]
    if config.get("kind") != KIND:
        raise ConfigError(f"{run_dir} is a '{config.get('kind')}' run, not a fit run")
    return config_from_dict(config, f"{run_dir}/config.yaml")


def check_resumable(saved: FitConfig, cfg: FitConfig) -> None:
    """A resumed run must keep every setting but the runtime-only ones (one-line error naming it)."""
    new, old = cfg.to_dict(), saved.to_dict()
    for key in new:
        if key not in RUNTIME_KEYS and new[key] != old[key]:
            raise ConfigError(f"--resume: '{key}' differs from the run's ({old[key]!r} -> {new[key]!r}); "
                              f"only {', '.join(RUNTIME_KEYS)} may change")


def train(cfg: FitConfig, run=None, stop_after_steps: int | None = None, accelerator=None,
          on_step: Callable[[int], None] | None = None, tracker=None) -> FitResult:
    """Build the parts of `cfg` and train them (engine.build, engine.train_loop); `tracker`, a
    `methods.tracking.RunTracker`, receives the curves."""
    acc = accelerator or make_accelerator(cfg)
    return train_loop(build(cfg, acc, run=run, tracker=tracker, stop_after_steps=stop_after_steps, on_step=on_step))


def fit(cfg: FitConfig, out: str | Path | None = None, resume: bool = False,
        stop_after_steps: int | None = None, report: bool = True,
        on_step: Callable[[int], None] | None = None) -> FitResult:
    """Train and evaluate per `cfg` in a new run folder `out` (or continue the run at `out`)."""
    from accelerate.utils import broadcast_object_list

    from longtail.methods.tracking import RunTracker, require_tracker
    from longtail.runs import create_run

    started = time.perf_counter()
    if resume and out is not None:
        done = finished_result(out)
        if done is not None:
            return done
    warn_untrained(cfg)
    check_prefix_cache_folder(cfg)
    require_tracker(cfg.log_with)
    acc = make_accelerator(cfg)
    run = None
    if acc.is_main_process:
        if resume:
            if out is None or not (Path(out) / "config.yaml").is_file():
                raise ConfigError(f"--resume needs the folder of an existing fit run, got {out}")
            check_resumable(config_from_run(out), cfg)
            run = create_run(out, KIND, cfg.to_dict(), staged=False, resume=True)
        else:
            run = create_run(out, KIND, cfg.to_dict(), seed=cfg.seed, device=cfg.device, staged=False)
    folder = broadcast_object_list([str(run.dir) if run else None])[0] if acc.num_processes > 1 else str(run.dir)
    if run is None:  # other ranks: same folder, checkpoints are written by the main process
        run = create_run(folder, KIND, cfg.to_dict(), staged=False, resume=True, claim=False)
    tracker = RunTracker(cfg.log_with, run.dir, cfg.to_dict(), run_name=_run_name(cfg, run.dir),
                         main_process=acc.is_main_process)
    try:
        with run:  # an exception or interrupt records status 'failed' / 'interrupted'
            result = train(cfg, run=run, stop_after_steps=stop_after_steps, accelerator=acc, on_step=on_step,
                           tracker=tracker)
    except BaseException as err:
        tracker.finish()
        # A new run that fails before its first checkpoint has nothing to resume: remove it,
        # so the same --out can be used again. Runs with a checkpoint stay for --resume.
        latest = run.dir / ckpt.CHECKPOINTS / ckpt.LATEST
        if not resume and acc.is_main_process and not latest.exists():
            shutil.rmtree(run.dir, ignore_errors=True)
        elif isinstance(err, KeyboardInterrupt) and acc.is_main_process:
            resume_hint(run.dir)
        raise
    if result.interrupted and acc.is_main_process:
        run.mark("interrupted")
        resume_hint(run.dir)
    if result.interrupted or not acc.is_main_process:
        tracker.finish()
        return result
    with run:
        finish_run(run, cfg, result, report, started)
    tracker.finish(result.metrics, result.metrics.get("optimizer_steps"))
    if not cfg.keep_checkpoints:
        shutil.rmtree(run.dir / ckpt.CHECKPOINTS, ignore_errors=True)
    return result


def _run_name(cfg: FitConfig, folder: Path) -> str:
    """The tracker's name of a run: PIPELINE/e0_b1 for an LT-Soups run, else the folder's name."""
    pipeline = cfg.origin.get("pipeline") if isinstance(cfg.origin, dict) else None
    return f"{Path(str(pipeline)).name}/{folder.name}" if pipeline else folder.name


def resume_hint(folder: Path) -> None:
    """Say on stderr where an interrupted run stopped and how to continue it (issue 22 item 18)."""
    import sys

    from longtail.io import read_json

    latest = folder / ckpt.CHECKPOINTS / ckpt.LATEST
    try:
        step = read_json(latest).get("step") if latest.is_file() else None
    except Exception:  # a damaged latest.json: --resume will name it
        step = None
    kept = f"its checkpoint at step {step} is kept" if step is not None else "no checkpoint was saved yet"
    print(f"{folder}: interrupted, {kept}; continue with: longtail fit --out {folder} --resume", file=sys.stderr)


def finished_result(out: str | Path) -> FitResult | None:
    """The saved result of a finished fit run at `out` (None when it is not finished): resuming
    it leaves every file untouched and says so (issue 22 item 11)."""
    import sys

    from longtail.io import read_json

    folder = Path(out)
    status = read_json(folder / "status.json") if (folder / "status.json").is_file() else None
    if not isinstance(status, dict) or status.get("status") != "finished":
        return None
    metrics = read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else {}
    print(f"{folder} is a finished run: nothing to resume, left untouched "
          f"(longtail eval {folder} evaluates it again)", file=sys.stderr)
    return FitResult(model=None, metrics=metrics if isinstance(metrics, dict) else {}, run_dir=folder)


def warn_untrained(cfg: FitConfig) -> None:
    """epochs=0 / steps=0 trains nothing: say so unless the method is meant to (zero_shot), so an
    untrained run finished by mistake is not taken for a trained one (issue 22 item 16)."""
    if (cfg.steps if cfg.steps is not None else cfg.epochs) == 0 and cfg.method != "zero_shot":
        import warnings

        key = "steps" if cfg.steps is not None else "epochs"
        warnings.warn(f"{key}=0: nothing is trained, the run evaluates the untrained model "
                      f"(-m zero_shot does that on purpose; set {key}=N to train)", stacklevel=3)


def check_prefix_cache_folder(cfg: FitConfig) -> None:
    """A run that trains from the frozen-prefix cache needs a writable cache folder: one line
    saying what to do, before any work (issue 22 item 7)."""
    if not cfg.uses_prefix_cache or (cfg.steps if cfg.steps is not None else cfg.epochs) == 0:
        return
    from longtail.models.cache_store import unwritable
    from longtail.models.prefix_cache import default_cache_dir

    folder = Path(cfg.prefix_cache_dir) if cfg.prefix_cache_dir else default_cache_dir()
    why = unwritable(folder)
    if why is not None:
        raise ConfigError(f"the frozen-prefix cache folder {folder} is not writable ({why}): set LONGTAIL_CACHE "
                          "(or prefix_cache_dir=DIR) to a writable folder, or prefix_cache=off to train without it")


def finish_run(run, cfg: FitConfig, result: FitResult, report: bool = True,
               started: float | None = None) -> None:
    """Write a trained model's side files, weights, metrics and report into its run folder."""
    from longtail.data.stats import class_stats
    from longtail.methods.finetune.data import open_split

    splits = result.splits
    full, train_set = splits.full_train, splits.train
    run.write_json("data_stats.json", class_stats(train_set.class_counts(), train_set.class_names,
                                                  group_counts=train_set.group_counts).to_dict())
    counts = full.class_counts()
    run.write_json(CLASSES, {"class_names": full.class_names, "train_counts": counts,
                             "group_counts": full.group_counts})
    ckpt.save_weights(run.dir, result.model.weights(), result.model.input_spec)
    test_set = splits.test if splits.test is not None else open_split(cfg, cfg.test_split, full.class_names)
    metrics = evaluate_model(result.model, cfg, test_set, counts, full.group_counts, full.class_names)
    metrics.update(result.metrics["throughput"])
    metrics["history"] = result.history
    if started is not None:  # this invocation (from the start or the resume), evaluation included
        metrics["wall_seconds"] = time.perf_counter() - started
    if result.selection:
        metrics["selection"] = result.selection
    if splits.validation:
        metrics["validation"] = splits.validation  # how the selection images were drawn
    metrics["method"], metrics["label"] = cfg.method, f"{cfg.method}/{cfg.backbone}/{cfg.dataset}"
    run.finish(metrics)
    if report:
        from longtail.eval.report import write_report

        write_report(run.dir)
    result.metrics = metrics
