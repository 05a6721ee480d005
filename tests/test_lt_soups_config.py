"""One fine-tuning config (issue 21 item 1): an LT-Soups ingredient is the `lt_soups` preset run
through `fit` plus what the plan sets per job; old plan.yaml files migrate on read; one list of
runtime keys; the engine's loop takes one `Parts` object and reads the loss once per interval."""

from __future__ import annotations

import dataclasses

import pytest

from longtail.errors import ConfigError
from longtail.methods.finetune.config import RUNTIME_KEYS, FitConfig
from longtail.methods.finetune.presets import build_config as fit_config_of
from longtail.soups import lt_soups
from longtail.soups.lt_soups import PER_JOB, LTSoups, LTSoupsConfig, build_config, migrate_plan

DATA = dict(num_classes=4, n_max=16, imbalance_ratio=4, test_per_class=5, size=32)


def test_ingredient_is_the_fit_recipe_but_the_per_job_keys(tmp_path):
    overrides = {"data_options": DATA, "root": str(tmp_path / "data"), "val_per_class": 2, "exponents": [0, 1]}
    cfg = build_config("synthetic_images", "tiny_clip", overrides)
    fit = fit_config_of("synthetic_images", "tiny_clip", "lt_soups",
                        {k: v for k, v in overrides.items() if k != "exponents"})
    pipe = LTSoups(cfg, tmp_path / "lts")
    for exponent, branch in pipe.jobs():
        job = pipe.ingredient_config(exponent, branch).to_dict()
        differ = {k for k, v in fit.to_dict().items() if job[k] != v}
        # documented differences: T_i and its warmup, the job's seed, CE on a balanced subset, the subset, provenance
        assert differ <= {"steps", "warmup_steps", "seed", "loss", "loss_options", "balance_exponent",
                          "subset_seed", "origin"}, differ
        assert {"steps", "warmup_steps", "balance_exponent", "origin"} <= differ
        assert job["method"] == fit.method == "lt_soups"


def test_lt_soups_defaults_are_the_preset_and_every_fit_key_reaches_it():
    from longtail.methods.finetune.presets import METHOD_PRESETS

    cfg = LTSoupsConfig()
    for key, value in METHOD_PRESETS.get("lt_soups").items():
        if key not in PER_JOB:
            assert getattr(cfg, key) == value, key
    fit_keys = {f.name for f in dataclasses.fields(FitConfig)}
    assert fit_keys - set(PER_JOB) <= set(lt_soups.valid_keys())  # derived, not copied
    assert not set(PER_JOB) & set(lt_soups.valid_keys())
    with pytest.raises(ConfigError, match="set per job"):
        build_config("synthetic_images", "tiny_clip", {"loss": "ce"})
    with pytest.raises(ConfigError, match="unknown config key"):
        build_config("synthetic_images", "tiny_clip", {"branchez": 1})


@pytest.mark.parametrize("data, backbone, overrides", [
    ("synthetic_images", "tiny_clip", {}),
    ("cifar100_ir100", "clip_vit_b16", {"branches": 1}),
    ("cifar10_lt", "efficientnet_lite0", {"adapter": "partial", "adapter_options.num_blocks": 1,
                                          "prefix_cache": "auto", "lr": 1e-3, "ema_decay": None}),
])
def test_command_and_library_agree(data, backbone, overrides):
    """`longtail lt-soups KEY=VALUE` (commands.lt_soups) and the library give the same config."""
    from longtail.commands.lt_soups import build_config as command_config

    assert dataclasses.asdict(command_config(data, backbone, overrides)) == \
        dataclasses.asdict(build_config(data, backbone, overrides))
    cfg = build_config(data, backbone, overrides)
    assert cfg.data_options.get("selection") == ("lt_soups" if data.startswith("cifar100") else None)


def _old_plan(**settings) -> dict:
    """plan.yaml as the previous format wrote it (the old LTSoupsConfig's fields, no format_version)."""
    plan = {"kind": "lt_soups", "exponents": None, "dataset": "synthetic_images", "data_options": {}, "root": None,
            "val_split": None, "val_per_class": 10, "test_split": "test", "backbone": "tiny_clip",
            "backbone_options": {}, "adapter": "full", "adapter_options": {}, "head_init": "text",
            "prototype_options": {}, "templates": "lift", "scale": 30.0, "branches": 2, "merge": "recursive",
            "lam": 0.7, "lr": 3e-05, "weight_decay": 0.01, "batch_size": 128, "epochs": 10, "min_steps": 100,
            "max_steps": None, "ema_decay": 0.99, "n_evals": 5, "augment": "rrc_flip", "interpolation": "bilinear",
            "test_resize_ratio": 256 / 224, "decode_size": None, "stage2": True, "stage2_epochs": 10,
            "stage2_lr": None, "prefix_cache": "off", "prefix_views": 1, "prefix_view_kind": "flip",
            "prefix_cache_dir": None, "prefix_dtype": "fp16", "eval_batch_size": 256, "num_workers": 4,
            "precision": "bf16", "device": "auto", "seed": 0, "progress": True, "save_every": 0,
            "keep_checkpoints": False, "sampler": "random", "sampler_options": {}, "log_with": None}
    plan.update(settings)
    return plan


def test_old_plan_layout_migrates_on_read(tmp_path):
    from longtail.io import write_yaml

    new = {"kind": "lt_soups", "format_version": lt_soups.PLAN_FORMAT, "exponents": None,
           **dataclasses.asdict(LTSoupsConfig(lr=1e-3, branches=1))}
    migrated = migrate_plan(_old_plan(lr=1e-3, branches=1))
    assert migrated == new
    assert migrated["optimizer"] == "adamw" and migrated["final_lr_fraction"] == 0.1  # the old hard-coded values
    older = _old_plan()
    for key in ("adapter", "sampler", "log_with", "test_split"):  # plans from before those fields
        older.pop(key)
    assert migrate_plan(older)["adapter"] == "full"
    with pytest.raises(ConfigError, match="newer"):
        migrate_plan({**new, "format_version": 99})
    cfg = LTSoupsConfig(data_options=DATA, root=str(tmp_path / "data"), exponents=[0], branches=1,
                        device="cpu", num_workers=0)
    folder = tmp_path / "lts"
    folder.mkdir()
    old = _old_plan(data_options=DATA, root=str(tmp_path / "data"), exponents=[0], branches=1)
    write_yaml(folder / "plan.yaml", {**old, "device": "cuda", "num_workers": 8})  # runtime keys may differ
    LTSoups(cfg, folder).write_plan()  # the old folder is accepted
    write_yaml(folder / "plan.yaml", {**old, "lr": 1e-2})
    with pytest.raises(ConfigError, match="lr"):
        LTSoups(cfg, folder).write_plan()


def test_one_list_of_runtime_keys():
    from longtail.methods.finetune import runner

    assert runner.RESUME_SAFE_KEYS is RUNTIME_KEYS
    saved = FitConfig()
    for key, value in (("precision", "fp16"), ("device", "cpu"), ("num_workers", 0), ("log_with", "tensorboard")):
        runner.check_resumable(saved, dataclasses.replace(saved, **{key: value}))
    with pytest.raises(ConfigError, match="'lr' differs"):
        runner.check_resumable(saved, dataclasses.replace(saved, lr=0.5))
