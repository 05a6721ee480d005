"""Issue 22, "No silent wrong result: the second reliability audit" (items 4-7, 9, 11-18; items
1-3 and 10 have their own tests, item 8 is elsewhere). Each test names its item and failed
before the fix. Tiny data and the tiny CLIP only: the whole file runs in a few seconds."""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_random_images

from longtail import cli
from longtail.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"num_classes": 4, "n_max": 12, "imbalance_ratio": 4, "test_per_class": 4, "size": 16}


def _images(root: Path, counts: dict[str, int]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return write_random_images(root, counts, (8, 12), 0)


def _fails(capsys, argv, *parts: str) -> str:
    """Run the CLI: exit 2, the error is the last stderr line (warnings may precede it), no traceback."""
    assert cli.main([str(a) for a in argv]) == 2, argv
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert ": error: " in last, err
    for part in parts:
        assert part in last, err
    return last


def _features(path: Path, features, labels, class_names=None) -> Path:
    arrays = {"features": np.asarray(features, dtype=np.float32), "labels": np.asarray(labels)}
    if class_names is not None:
        arrays["class_names"] = np.asarray(class_names)
    np.savez(path, **arrays)
    return path


def _fit_cfg(root, method="lift", **overrides):
    from longtail.methods.finetune import build_config

    options = {"data_options": SMALL, "root": str(root), "batch_size": 8, "progress": False,
               "backbone_options": {"image_size": 16, "patch_size": 8}, **overrides}
    return build_config("synthetic_images", "tiny_clip", method, options)


# ----------------------------------------------------------------------------- item 4


def test_item4_changing_the_loss_drops_the_presets_loss_options(capsys, tmp_path):
    """Item 4: `fit ... loss=ce` failed with "loss 'ce' has no parameter 'tau'" (the preset's
    LA options stayed); now every loss works after every preset, on fit, lt-soups and probe."""
    from longtail.commands.lt_soups import build_config as lt_soups_config
    from longtail.config import apply_overrides
    from longtail.methods.finetune.presets import METHOD_PRESETS, build_config
    from longtail.methods.losses import LOSSES
    from longtail.methods.probe import ProbeConfig
    from longtail.soups.lt_soups import fit_config

    for method in METHOD_PRESETS.names():  # every preset, and every loss after the presets that pin options
        for loss in LOSSES.names() if method in ("lift", "sage") else ("ce",):
            cfg = build_config("synthetic_images", "tiny_clip", method, {"loss": loss})
            assert cfg.loss == loss
    sage = build_config("synthetic_images", "tiny_clip", "sage", {})
    assert sage.loss_options == {"gamma": 0.05, "mu": 0.5}  # a preset keeps its own options
    assert build_config("synthetic_images", "tiny_clip", "sage", {"loss": "la"}).loss_options == {}
    assert build_config("synthetic_images", "tiny_clip", "sage",
                        {"loss": "la", "loss_options.tau": 0.5}).loss_options == {"tau": 0.5}
    assert build_config("synthetic_images", "tiny_clip", "lift", {"loss": "la"}).loss_options == {"tau": 1.0}
    # the same for adapters: sage's alpha never reaches LoRA (whose alpha means something else)
    assert build_config("synthetic_images", "tiny_clip", "sage", {"adapter": "lora"}).adapter_options == {}
    lts = lt_soups_config("synthetic_images", "tiny_clip", {"adapter": "partial", "adapter_options.num_blocks": 1})
    assert lts.adapter_options == {"num_blocks": 1}
    for loss in LOSSES.names():
        assert fit_config(lts, steps=1, seed=0, loss=loss).loss == loss
        probe = apply_overrides(ProbeConfig(loss="la", loss_options={"tau": 0.5}), {"loss": loss})
        assert probe.loss == loss and probe.loss_options == ({"tau": 0.5} if loss == "la" else {})
    # the command line: the config is fine, only the (missing) data fails
    _fails(capsys, ["fit", "-d", tmp_path / "missing", "-b", "tiny_clip", "-m", "lift", "loss=ce"], "not found")


# ----------------------------------------------------------------------------- item 5

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
SHARED_LAYERS = ("models", "data", "eval", "maths")  # reached by several commands: no flag spelling


def _message_flags(path: Path):
    """(line, flag) of every --flag in a string of a raise, print(...) or warn(...) of `path`."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            parts = [node.exc]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in ("print", "warn"):
            parts = [node]
        else:
            continue
        for part in parts:
            for const in ast.walk(part):
                if isinstance(const, ast.Constant) and isinstance(const.value, str):
                    yield from ((node.lineno, flag) for flag in FLAG.findall(const.value))


def test_item5_every_flag_a_message_names_is_one_its_command_accepts():
    """Item 5: every EfficientNet `fit` suggested `--imagenet-map`, a flag of `features` that
    `fit` rejects. Messages of a command name only its own flags; the shared layers (models,
    data, eval) name none, each command adds its own spelling."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {name: set(p._option_string_actions) for name, p in sub.choices.items()}
    every = set().union(*flags.values())
    wrong = []
    for path in sorted((ROOT / "longtail").rglob("*.py")):
        rel = path.relative_to(ROOT / "longtail")
        command = rel.stem.replace("_", "-") if rel.parts[0] == "commands" else None
        for line, flag in _message_flags(path):
            allowed = flags[command] if command in flags else set() if rel.parts[0] in SHARED_LAYERS else every
            if flag not in allowed:
                wrong.append(f"{rel}:{line}: {flag}")
    assert not wrong, wrong


def test_item5_the_imagenet_map_hint_of_fit_is_a_fit_override(capsys, tmp_path, monkeypatch):
    """Item 5: head_init=prototypes / auto on an EfficientNet without a class map names the
    `fit` spelling, which `fit` accepts; `features` names its own flag."""
    from longtail.methods.finetune.model import InitContext, auto_init, prototypes_init
    from longtail.methods.finetune.presets import build_config
    from longtail.models.efficientnet import EfficientNetLiteBackbone

    backbone = EfficientNetLiteBackbone("efficientnet_lite0", image_size=32, pretrained=False)
    feats = torch.nn.functional.normalize(torch.randn(4, backbone.feature_dim), dim=1)
    ctx = InitContext(backbone, ["cat", "dog"], "lift", lambda: (feats, torch.tensor([0, 0, 1, 1])))
    with pytest.raises(ConfigError) as err:
        prototypes_init(ctx)
    assert "--imagenet-map" not in str(err.value)
    (pair,) = re.findall(r"\b(\w+\.\w+)=FILE\b", str(err.value))
    cfg = build_config("synthetic_images", "efficientnet_lite0", "partial_ft", {pair: "map.json"})
    assert cfg.prototype_options == {"imagenet_map": "map.json"}
    assert auto_init(ctx).shape == (2, backbone.feature_dim)  # class means, saying how to get the rows
    assert "prototype_options.imagenet_map=FILE" in capsys.readouterr().err
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    images = _images(tmp_path / "imgs", {"cat": 2, "dog": 2})
    _fails(capsys, ["features", "--data", images, "--backbone", "efficientnet_lite0", "--prototypes", "imagenet",
                    "--out", tmp_path / "f.npz", "--backbone-option", "pretrained=false", "--backbone-option", "image_size=32"],
           "class -> ImageNet-class map", "pass --imagenet-map FILE")


# ----------------------------------------------------------------------------- items 6 and 7


def _zip_with_a_damaged_member(tmp_path: Path) -> Path:
    images = _images(tmp_path / "imgs", {"a": 3, "b": 2})
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w", zipfile.ZIP_DEFLATED) as archive:
        for p in sorted(images.rglob("*.png")):
            archive.write(p, p.relative_to(images).as_posix())
        info = archive.getinfo("b/1.png")
    raw = bytearray(good.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + 8  # inside the member's compressed bytes
    raw[start:start + 16] = bytes(b ^ 0xFF for b in raw[start:start + 16])
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(raw))
    return bad


def test_item6_a_damaged_zip_member_is_a_corrupt_image_and_on_corrupt_skip_leaves_it_out(tmp_path):
    """Item 6: a damaged member (bad CRC / broken deflate stream) raised zipfile.BadZipFile or
    zlib.error, a traceback that on_corrupt=skip did not catch."""
    from longtail.data.images import CorruptImageError
    from longtail.data.open_images import open_images

    bad = _zip_with_a_damaged_member(tmp_path)
    data = open_images(str(bad), progress=False)
    broken = data.items.tolist().index("b/1.png")
    with pytest.raises(CorruptImageError, match=r"bad\.zip:b/1\.png.*damaged zip member.*on_corrupt=skip"):
        data.load(broken)
    with pytest.warns(UserWarning, match="skipped 1 corrupt image"):
        kept = open_images(str(bad), on_corrupt="skip", progress=False)
    assert len(kept) == 4 and "b/1.png" not in kept.items.tolist()


def test_item7_a_corrupt_image_names_the_file_and_the_skip_option_not_running_again(tmp_path, capsys, monkeypatch):
    """Item 7: a corrupt image printed "run the same command again", which fails the same way."""
    import longtail.models.features as features_module
    from longtail.data.images import CorruptImageError
    from longtail.data.open_images import open_images
    from longtail.models.backbone import load_backbone
    from longtail.models.features import extract_features

    images = _images(tmp_path / "imgs", {"a": 3, "b": 2})
    (images / "b" / "1.png").write_bytes(b"not a png")
    backbone = load_backbone("tiny_clip", image_size=16)
    monkeypatch.setattr(features_module, "SHARD_IMAGES", 2)  # a shard per batch
    with pytest.raises(CorruptImageError) as err:
        extract_features(backbone, open_images(str(images), progress=False), batch_size=2,
                         cache_dir=tmp_path / "cache", progress=False, device="cpu")
    assert "b/1.png" in str(err.value) and "data_options.on_corrupt=skip" in str(err.value)
    printed = capsys.readouterr().err
    assert "again" not in printed and "kept 4 of 5 images" in printed, printed  # two batches are kept
    assert "reused once the error below is fixed" in printed
    # raised in a DataLoader worker, torch re-raises it with a traceback in the text: one line again
    worker = CorruptImageError("Caught CorruptImageError in DataLoader worker process 0.\nOriginal Traceback "
                               "(most recent call last):\n  File \"x.py\", line 1\nlongtail.data.images."
                               "CorruptImageError: cannot read image b/1.png: broken")
    assert str(worker) == "cannot read image b/1.png: broken"


def test_item7_a_read_only_cache_falls_back_or_says_what_to_do(tmp_path, capsys, monkeypatch):
    """Item 7: an unwritable cache folder failed with a bare OSError; features now extract
    without it (one warning saying what to do), fit says before any work what to change.
    Also item 18: `features` says 'no prototypes' (not 'none') and how many images each class
    has (item 13)."""
    from longtail.methods.finetune.config import FitConfig
    from longtail.methods.finetune.runner import check_prefix_cache_folder

    images = _images(tmp_path / "imgs", {"a": 3, "b": 2})
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("LONGTAIL_CACHE", str(blocker / "cache"))  # under a file: never writable, even as root
    out = tmp_path / "f.npz"
    with pytest.warns(UserWarning, match="cache folder .* is not writable.*computing without.*LONGTAIL_CACHE"):
        assert cli.main(["features", "--data", str(images), "--backbone", "tiny_clip", "--out", str(out),
                         "--prototypes", "none", "--no-progress", "--backbone-option", "image_size=16"]) == 0
    captured = capsys.readouterr()
    assert "2 classes (2 to 3 images each), no prototypes" in captured.out, captured.out
    assert out.is_file()
    cfg = FitConfig(adapter="partial", adapter_options={"num_blocks": 1}, prefix_cache="on", epochs=1)
    with pytest.raises(ConfigError, match="not writable.*LONGTAIL_CACHE.*prefix_cache=off"):
        check_prefix_cache_folder(cfg)


# ----------------------------------------------------------------------------- item 9


def test_item9_an_out_of_range_label_without_class_names_is_named(tmp_path, capsys):
    """Item 9: label 9 in a file of classes 0-2 without class_names was reported as the empty
    class 'class_3'."""
    rng = np.random.default_rng(0)
    train = _features(tmp_path / "t.npz", rng.normal(size=(12, 4)), [0] * 5 + [1] * 4 + [2] * 2 + [9])
    test = _features(tmp_path / "e.npz", rng.normal(size=(6, 4)), [0, 0, 1, 1, 2, 2])
    last = _fails(capsys, ["probe", "--train", train, "--test", test, "--no-report", "--out", tmp_path / "run"],
                  "label 9 (1 sample)", "out of range", "3 to 8")
    assert "class_3" not in last
    # with class names, an empty class is still what it is
    named = _features(tmp_path / "n.npz", rng.normal(size=(6, 4)), [0, 0, 2, 2, 2, 2], ["a", "b", "c"])
    other = _features(tmp_path / "m.npz", rng.normal(size=(3, 4)), [0, 1, 2], ["a", "b", "c"])
    _fails(capsys, ["probe", "--train", named, "--test", other, "--no-report", "--out", tmp_path / "run2"],
           "class 'b' has no training samples")


# ----------------------------------------------------------------------------- items 11 and 18 (fit)


def test_item11_resuming_a_finished_run_leaves_it_untouched_and_item18_interrupt_hints(tmp_path, capsys):
    """Item 11: `fit --resume` on a finished run rewrote metrics.json (train_images_per_s -> null).
    Item 18: an interrupted fit gave no --resume hint and a resume did not say where it starts."""
    from longtail.methods.finetune import fit

    cfg = _fit_cfg(tmp_path / "data", epochs=1)
    out = tmp_path / "run"
    assert fit(cfg, out=out, stop_after_steps=1, report=False).interrupted
    err = capsys.readouterr().err
    assert f"longtail fit --out {out} --resume" in err and "step 1" in err
    fit(cfg, out=out, resume=True, report=False)
    assert f"resuming {out} from step 1 of 4" in capsys.readouterr().err
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert json.loads(before["metrics.json"])["train_images_per_s"] is not None
    assert cli.main(["fit", "--out", str(out), "--resume", "--json"]) == 0
    captured = capsys.readouterr()
    assert "finished run: nothing to resume, left untouched" in captured.err
    assert json.loads(captured.out)["train_images_per_s"] is not None
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


# ----------------------------------------------------------------------------- item 12


def test_item12_zero_or_overflowing_features_and_huge_history_are_one_line_errors(tmp_path, capsys):
    """Item 12: an all-zero file (Cholesky failure), float32-overflowing values and
    history_size=1e9 (a 60 GB allocation) crashed with tracebacks."""
    from longtail.data.features import FeatureSet
    from longtail.methods.probe import ProbeConfig, fit_probe

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 4)), np.repeat(np.arange(3), 4)
    ok = _features(tmp_path / "ok.npz", x, y)
    zero = _features(tmp_path / "zero.npz", np.zeros_like(x), y)
    huge = x.copy()
    huge[1, 2] = 3e38
    big = _features(tmp_path / "big.npz", huge, y)
    out = tmp_path / "run"
    _fails(capsys, ["probe", "--train", zero, "--test", ok, "--out", out], "every feature is zero")
    _fails(capsys, ["probe", "--train", big, "--test", ok, "--out", out], "overflow float32", "row 1")
    _fails(capsys, ["probe", "--train", ok, "--test", ok, "--out", out, "history_size=1e9"], "history_size must be at most")
    assert ProbeConfig(history_size="1e2").history_size == 100  # 1e2 is an integer
    assert not out.exists()
    # a zero row among others is defined: it L2-normalises to 0, every class scores the same
    x[0] = 0
    probe = fit_probe(FeatureSet(x.astype(np.float32), y), ProbeConfig(method="cosine", loss="ce", device="cpu"))
    logits = np.asarray(probe.logits(np.zeros((1, 4), np.float32)))
    assert np.isfinite(logits).all() and np.ptp(logits) < 1e-6


# ----------------------------------------------------------------------------- item 13


def test_item13_symlinked_folders_that_loop_are_listed_once(tmp_path):
    """Item 13: os.walk(followlinks=True) followed a link back into its own folder (12 images
    became 3,772); now each real folder is listed once and the warning gives the counts."""
    from longtail.data.open_images import open_images

    root = _images(tmp_path / "imgs", {"a": 4, "b": 3})
    (root / "a" / "again").symlink_to(root / "a", target_is_directory=True)
    (root / "a" / "up").symlink_to(root, target_is_directory=True)
    (root / "b" / "deeper").mkdir()
    (root / "b" / "deeper" / "loop").symlink_to(root / "b", target_is_directory=True)
    with pytest.warns(UserWarning, match=r"did not follow 3 symlinked folder.*images per class: a 4, b 3"):
        data = open_images(str(root), progress=False)
    assert data.class_counts().tolist() == [4, 3]


# ----------------------------------------------------------------------------- item 14


def test_item14_leftovers_of_killed_builds_go_on_the_next_run_of_the_entry(tmp_path):
    """Item 14: hidden temporary arrays of a killed build (kill -9) and the shard folder of a
    dataset that on_corrupt=skip changed stayed in the cache for ever."""
    from longtail.data.open_images import open_images
    from longtail.models.backbone import load_backbone
    from longtail.models.cache_store import claim_entry
    from longtail.models.features import cache_path, extract_features

    images = _images(tmp_path / "imgs", {"a": 3, "b": 2})
    (images / "b" / "1.png").write_bytes(b"not a png")
    cache = tmp_path / "cache"
    backbone = load_backbone("tiny_clip", image_size=16)
    full = open_images(str(images), progress=False)
    with pytest.warns(UserWarning, match="skipped 1"):
        kept = open_images(str(images), on_corrupt="skip", progress=False)
    # what a killed build of each left: the full set's shards, a temporary file of the kept set's entry
    abandoned = cache_path(backbone, full, "fp32", cache).with_suffix(".shards")
    abandoned.mkdir(parents=True)
    (abandoned / "000000000-000000002.npy").write_bytes(b"x")
    entry = cache_path(backbone, kept, "fp32", cache)
    orphan = entry.with_name(f".{entry.name}.k1ll3d.tmp.npz")
    orphan.write_bytes(b"x")
    live = claim_entry(entry)  # a live build of the same entry (another process): its files are left alone
    extract_features(backbone, kept, batch_size=4, cache_dir=cache, progress=False, device="cpu", cache=False)
    extract_features(backbone, kept, batch_size=4, cache_dir=cache, progress=False, device="cpu")
    assert orphan.exists() and abandoned.exists()
    live.release()
    entry.unlink()
    extract_features(backbone, kept, batch_size=4, cache_dir=cache, progress=False, device="cpu")
    assert not orphan.exists() and not abandoned.exists() and entry.is_file()
    assert sorted(p.name for p in cache.iterdir()) == [entry.name]  # no lock file left either


def test_item14_prefix_cache_leftovers_go_on_the_next_run_of_the_entry(tmp_path):
    """Item 14: a hidden `.tmp.npy` of a killed prefix-cache build stayed unless 10 minutes old
    and the entry unfinished; now the next run of the entry removes it (no live build holds it)."""
    from longtail.data.open_images import open_images
    from longtail.models.backbone import load_backbone
    from longtail.models.prefix_cache import entry_path, open_prefix_cache
    from longtail.models.preprocess import EvalTransform

    data = open_images(str(_images(tmp_path / "imgs", {"a": 3, "b": 2})), progress=False)
    backbone = load_backbone("tiny_clip", image_size=16)
    decode = EvalTransform(size=16, crop_size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3)
    cache = tmp_path / "cache"

    def build():
        return open_prefix_cache(backbone, data, 1, 1, lambda x, i: decode.normalize(x)[:, None], decode, {},
                                 torch.device("cpu"), cache, batch_size=8, progress=False)

    build()
    path, _ = entry_path(backbone, data, 1, {}, "fp32", cache)
    orphan = path.with_name(f".{path.name}.npy.k1ll3d.tmp.npy")
    orphan.write_bytes(b"x")  # fresh: the old rule kept it 10 minutes, and for ever once the entry was whole
    build()
    assert not orphan.exists()
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]


def test_item14_longtail_cache_lists_sizes_and_prunes(tmp_path, capsys, monkeypatch):
    """Item 14: `longtail cache list / size / prune` gives the user control of $LONGTAIL_CACHE."""
    from longtail.models.cache_store import claim_entry

    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path))
    features, prefix = tmp_path / "features", tmp_path / "prefix"
    features.mkdir()
    prefix.mkdir()
    name = "tiny_clip-{}-{}".format
    old = features / f"{name('a' * 12, 'b' * 24)}.npz"
    old.write_bytes(b"1" * 1000)
    os.utime(old, (1e9, 1e9))  # used in 2001
    new = features / f"{name('c' * 12, 'd' * 24)}.npz"
    new.write_bytes(b"2" * 2000)
    partial = features / f"{name('e' * 12, 'f' * 24)}.shards"
    partial.mkdir()
    (partial / "000000000-000000004.npy").write_bytes(b"3" * 300)
    busy = prefix / f"{name('1' * 12, '2' * 24)}.shards"
    busy.mkdir()
    (busy / "000000000-000000004.npy").write_bytes(b"4" * 400)
    claim = claim_entry(busy)  # being built by a running process
    leftover = prefix / f".{name('5' * 12, '6' * 24)}.npy.k1ll3d.tmp.npy"
    leftover.write_bytes(b"5" * 50)

    assert cli.main(["cache", "list"]) == 0
    listing = capsys.readouterr().out
    assert "5 entries" in listing and "building" in listing and "leftover" in listing and "partial" in listing
    assert cli.main(["cache", "size", "--json"]) == 0
    sizes = json.loads(capsys.readouterr().out)
    assert sizes["bytes"] == {"features": 3300, "prefix": 450, "total": 3750}
    assert cli.main(["cache", "prune", "--older-than", "30d"]) == 0
    assert "removed 1 entry" in capsys.readouterr().out and not old.exists() and new.exists()
    assert cli.main(["cache", "prune", "--partial", "--dry-run"]) == 0
    assert "would remove 2 entries" in capsys.readouterr().out and partial.exists()
    assert cli.main(["cache", "prune", "--partial"]) == 0
    assert not partial.exists() and not leftover.exists() and busy.exists()  # the live build stays
    assert cli.main(["cache", "prune", "--all"]) == 0
    assert "kept 1 that a running longtail process is building" in capsys.readouterr().out
    assert not new.exists() and busy.exists()
    claim.release()
    assert cli.main(["cache", "prune", "--all"]) == 0 and not busy.exists()
    _fails(capsys, ["cache", "prune"], "one of --older-than AGE, --partial or --all")
    _fails(capsys, ["cache", "prune", "--older-than", "soon"], "expected a number and a unit")


# ----------------------------------------------------------------------------- item 15


def test_item15_weight_files_follow_the_umask(tmp_path):
    """Item 15: safetensors' save_file creates 0600 files, so weights were 0600 whatever the umask."""
    from longtail.methods.finetune import checkpoint as ckpt
    from longtail.models.preprocess import InputSpec
    from longtail.soups.merge import save_state_dict

    mask = os.umask(0o027)
    try:
        merged = save_state_dict({"w": torch.ones(2)}, tmp_path / "soup.safetensors")
        spec = InputSpec(size=16, mean=(0.5,) * 3, std=(0.5,) * 3, test_resize_ratio=1.0)
        fitted = ckpt.save_weights(tmp_path / "run", {"w": torch.ones(2)}, spec)
    finally:
        os.umask(mask)
    for path in (merged, fitted):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


# ----------------------------------------------------------------------------- item 16


def test_item16_untrained_runs_zero_sizes_empty_labels_duplicate_names_same_train_test(tmp_path, capsys):
    """Item 16: epochs=0 saved an untrained run silently; backbone_options.image_size=0 meant
    224; a CSV row with an empty label made a class ""; duplicate class names were accepted;
    --train = --test gave no warning."""
    from longtail.data.features import FeatureSet
    from longtail.data.open_images import open_images
    from longtail.methods.finetune.runner import warn_untrained
    from longtail.models.backbone import load_backbone
    from longtail.models.efficientnet import EfficientNetLiteBackbone

    with pytest.warns(UserWarning, match="epochs=0: nothing is trained"):
        warn_untrained(_fit_cfg(tmp_path, "lift", epochs=0))
    with pytest.warns(UserWarning, match="steps=0"):
        warn_untrained(_fit_cfg(tmp_path, "lift", steps=0))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_untrained(_fit_cfg(tmp_path, "zero_shot"))  # untrained on purpose
    with pytest.raises(ConfigError, match="image_size"):
        load_backbone("tiny_clip", image_size=0)
    with pytest.raises(ConfigError, match="image_size must be >= 32.*got 0"):
        EfficientNetLiteBackbone("efficientnet_lite0", image_size=0, pretrained=False)

    images = _images(tmp_path / "imgs", {"a": 2, "b": 2})
    table = tmp_path / "list.csv"
    table.write_text("path,label\nimgs/a/0.png,a\nimgs/a/1.png,\nimgs/b/0.png,b\n")
    with pytest.raises(DataError, match=r"list\.csv:3: the row for 'imgs/a/1.png' has an empty label"):
        open_images(str(table), progress=False)
    with pytest.raises(DataError, match="class name 'a' appears twice"):
        open_images(str(images), class_names=["a", "a"], progress=False)
    with pytest.raises(DataError, match="class name 'x' appears twice"):
        FeatureSet(np.ones((2, 2), np.float32), np.array([0, 1]), class_names=["x", "x"])

    rng = np.random.default_rng(0)
    same = _features(tmp_path / "s.npz", rng.normal(size=(8, 4)), np.repeat([0, 1], 4))
    link = tmp_path / "link.npz"
    link.symlink_to(same)
    with pytest.warns(UserWarning, match="--train and --test are the same data"):
        assert cli.main(["probe", "--train", str(same), "--test", str(link), "--no-report", "--out",
                         str(tmp_path / "run"), "method=linear", "max_iter=3"]) == 0


# ----------------------------------------------------------------------------- item 17 (see test_first_hour.py)
# ----------------------------------------------------------------------------- item 18


def test_item18_wording(tmp_path, capsys):
    """Item 18: `stats --split test` said "training samples"; `fit` printed fractions where
    `probe` prints percentages; an interrupted loop said "done, N images"."""
    import io

    from longtail.commands.fit import _shown
    from longtail.progress import LineProgress

    root = tmp_path / "data"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        _images(root / split, {"a": 3, "b": 2})
    assert cli.main(["stats", str(root), "--split", "test", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "test samples      5" in out and "training" not in out
    assert [_shown("all", 0.4567), _shown("few", None), _shown("num_trainable", 12)] == [
        "all=45.7%", "few=n/a", "num_trainable=12"]
    stream, now = io.StringIO(), [0.0]
    bar = LineProgress(total=10, desc="features", unit="image", interval=1.0, stream=stream, clock=lambda: now[0])
    now[0] = 2.0
    bar.update(4)
    bar.close()  # what an interrupt's `finally` does
    assert stream.getvalue().splitlines()[-1] == "features: stopped at 4/10 images after 2 s"
