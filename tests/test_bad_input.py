"""Issue 13, item 4: bad input is a one-line error (exit 2, no traceback) before anything is
written. Truncated weights, corrupt feature / JSON / YAML files, unwritable outputs, unordered
group thresholds, bad booleans, and MonoSoup bases of another architecture (observation 6)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from longtail import cli
from longtail.errors import ConfigError, DataError
from longtail.io import check_writable, load_weights_file, read_json, read_yaml
from longtail.soups.merge import save_state_dict
from longtail.soups.monosoup import check_bases


def _fails(capsys, argv: list[str], *parts: str) -> str:
    """Run the CLI, expect exit 2 and one stderr line containing every part."""
    assert cli.main([str(a) for a in argv]) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, err
    return err


def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _state(seed: int, extra: dict[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"enc.fc.weight": (6, 5), "enc.fc.bias": (6,), "head.weight": (3, 6), **(extra or {})}
    return {k: torch.randn(*s, generator=g) for k, s in shapes.items()}


def _truncated(tmp_path, name="trunc.safetensors"):
    good = save_state_dict(_state(0), tmp_path / f"good_{name}")
    data = good.read_bytes()
    bad = tmp_path / name
    bad.write_bytes(data[: len(data) // 2])
    return good, bad


# ----------------------------------------------------------------------------- weights


def test_load_weights_file_names_a_truncated_or_garbage_file(tmp_path):
    good, bad = _truncated(tmp_path)
    assert set(load_weights_file(good)) == set(_state(0))
    for content in (b"", b"garbage", good.read_bytes()[:9], good.read_bytes()[:-4]):
        bad.write_bytes(content)
        with pytest.raises(DataError, match="not a valid safetensors file \\(truncated or corrupt\\)"):
            load_weights_file(bad)
    with pytest.raises(DataError, match="cannot read weights"):
        load_weights_file(tmp_path)  # a folder, not a file


def test_truncated_weights_given_to_soup_and_monosoup(tmp_path, capsys):
    good, bad = _truncated(tmp_path)
    out = tmp_path / "out"
    _fails(capsys, ["soup", good, bad, "--out", out], str(bad), "not a valid safetensors file")
    _fails(capsys, ["monosoup", "--w1", bad, "--w0", good, "--out", out], "truncated or corrupt")
    _fails(capsys, ["monosoup", "--w1", good, "--w0", bad, "--out", out], "truncated or corrupt")
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_eval_of_a_run_with_truncated_weights(tmp_path, capsys):
    """A fit-layout run (eval rebuilds the model from model.safetensors) and the
    checkpoint reader used on resume."""
    from longtail.methods.finetune import checkpoint as ckpt
    from longtail.models.preprocess import InputSpec
    from longtail.runs import create_run

    with create_run(tmp_path / "ft", "fit", {"method": "full_ft"}) as run:
        ckpt.save_weights(run.dir, _state(0), InputSpec(size=16, mean=(0.5,) * 3, std=(0.5,) * 3,
                                                        test_resize_ratio=1.0))
        folder = run.finish({"all": 0.5})
    weights = folder / ckpt.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    before = _files(tmp_path)
    _fails(capsys, ["eval", folder], f"{weights}: not a valid safetensors file")
    assert _files(tmp_path) == before
    # resume: a truncated training_state.pt or trainable tensors are one-line DataErrors
    saved = ckpt.save_checkpoint(folder, 3, _state(1), {"step": torch.tensor(3)})
    (saved / "training_state.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DataError, match="training_state.pt \\(truncated or corrupt\\)"):
        ckpt.load_checkpoint(folder)
    (saved / "trainable.safetensors").write_bytes(b"\x01")
    with pytest.raises(DataError, match="not a valid safetensors file"):
        ckpt.load_checkpoint(folder)
    (folder / ckpt.CHECKPOINTS / ckpt.LATEST).write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        ckpt.load_checkpoint(folder)


def test_eval_of_a_probe_run_with_a_corrupt_head(tmp_path, capsys):
    from longtail.data.features import FeatureSet
    from longtail.methods.probe import ProbeConfig, run_probe

    rng = np.random.default_rng(0)
    sets = [FeatureSet(rng.normal(size=(12, 3)).astype(np.float32), np.repeat(np.arange(3), 4))
            for _ in range(2)]
    folder, _ = run_probe(*sets, ProbeConfig(method="linear", loss="ce", max_iter=5), out=tmp_path / "p",
                          report=False)
    head = next(folder.rglob("head.safetensors"))
    head.write_bytes(head.read_bytes()[:50])
    _fails(capsys, ["eval", folder], "head.safetensors: not a valid safetensors file")
    head.with_suffix(".json").write_text("{not json")
    _fails(capsys, ["eval", folder], "head.json: not valid JSON")


# ----------------------------------------------------------------------------- other files


@pytest.mark.parametrize("suffix, content", [(".npz", b"PK\x03\x04junk"), (".npz", b""),
                                             (".safetensors", b"\xff" * 20), (".safetensors", b"")])
def test_corrupt_feature_file_is_a_data_error(tmp_path, capsys, suffix, content):
    bad = tmp_path / f"train{suffix}"
    bad.write_bytes(content)
    _fails(capsys, ["probe", "--train", bad, "--test", bad, "--out", tmp_path / "run"], str(bad))
    assert _files(tmp_path) == [bad.name]


def test_corrupt_json_and_yaml_name_the_file(tmp_path, capsys):
    (tmp_path / "a.json").write_text('{"x": ')
    (tmp_path / "b.yaml").write_text("method: [uniform\n")
    (tmp_path / "c.yaml").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DataError, match="a.json: not valid JSON \\(line 1"):
        read_json(tmp_path / "a.json")
    with pytest.raises(DataError, match="b.yaml: not valid YAML"):
        read_yaml(tmp_path / "b.yaml")
    with pytest.raises(DataError, match="c.yaml: not a UTF-8 text file"):
        read_yaml(tmp_path / "c.yaml")
    with pytest.raises(DataError, match="cannot read"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "d.yaml").write_text("parameters: &p {lam: *p}\n")
    with pytest.raises(DataError, match="d.yaml: not valid YAML \\(a value contains itself"):
        read_yaml(tmp_path / "d.yaml")
    _fails(capsys, ["stats", "/nonexistent/x", "data_options.ir=&a [*a]"], "not found")  # kept as text
    for recipe in ("b.yaml", "c.yaml"):
        _fails(capsys, ["soup", "--recipe", tmp_path / recipe, "--out", tmp_path / "s"], recipe)
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------- outputs


def test_check_writable(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    assert check_writable(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    check_writable(tmp_path / "file", folder=False)  # an existing file may be replaced
    with pytest.raises(ConfigError, match="file is a file, not a folder"):
        check_writable(tmp_path / "file" / "run")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_writable(tmp_path / "file")
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        check_writable(tmp_path, folder=False)
    assert not (tmp_path / "new").exists()  # nothing is created
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real(p, mode))
    with pytest.raises(ConfigError, match="is not writable"):
        check_writable(tmp_path / "run")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_parent_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            check_writable(locked / "run")
    finally:
        locked.chmod(0o755)


def test_unwritable_out_fails_before_any_work(tmp_path, capsys):
    good = save_state_dict(_state(0), tmp_path / "a.safetensors")
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    _fails(capsys, ["soup", good, good, "--out", out], "--out", "is a file, not a folder")
    _fails(capsys, ["monosoup", "--w1", good, "--w0", good, "--out", out], "is a file, not a folder")
    _fails(capsys, ["lt-soups", "-d", tmp_path / "missing", "-b", "tiny_clip", "--out", out],
           "is a file, not a folder")  # before the (missing) data is looked at
    assert _files(tmp_path) == ["a.safetensors", "file"]


def test_an_os_error_with_a_path_is_one_line_and_one_without_keeps_its_traceback(monkeypatch, capsys):
    import longtail.commands.stats as stats

    def unreadable(args):
        raise PermissionError(13, "Permission denied", "/some/path")

    monkeypatch.setattr(stats, "run", unreadable)
    _fails(capsys, ["stats", "x"], "/some/path: Permission denied")

    def bug(args):
        raise OSError("a bug, not a user path")

    monkeypatch.setattr(stats, "run", bug)
    with pytest.raises(OSError, match="a bug"):
        cli.main(["stats", "x"])


def test_a_newline_in_a_key_still_gives_one_line(capsys):
    _fails(capsys, ["stats", "/nonexistent/x", "ma\nny=3"], "unknown config key 'ma\\nny'")


# ----------------------------------------------------------------------------- values


def test_bool_and_ordered_thresholds(tmp_path, capsys):
    from longtail.data.features import FeatureSet, save_features

    rng = np.random.default_rng(0)
    train = save_features(FeatureSet(rng.normal(size=(12, 3)).astype(np.float32),
                                     np.repeat(np.arange(3), 4)), tmp_path / "t.npz")
    out = tmp_path / "run"
    _fails(capsys, ["probe", "--train", train, "--test", train, "normalize=maybe", "--out", out],
           "normalize='maybe': expected true/false")
    _fails(capsys, ["probe", "--train", train, "--test", train, "max_iter=ten", "--out", out],
           "max_iter='ten': expected an integer")
    _fails(capsys, ["probe", "--train", train, "--test", train, "lr=abc", "--out", out], "lr='abc': expected a number")
    _fails(capsys, ["probe", "--train", train, "--test", train, "--many", "10", "--few", "50", "--out", out],
           "few (50) must not exceed many (10)")
    _fails(capsys, ["stats", train, "--many", "10", "--few", "50"], "few (50) must not exceed many (10)")
    _fails(capsys, ["stats", train, "many=10", "few=-1"], "few (-1)")
    assert _files(tmp_path) == ["t.npz"]


# ----------------------------------------------------------------------------- MonoSoup bases


def test_monosoup_of_another_architecture_is_refused(tmp_path, capsys):
    """Observation 6: W1 and W0 each hold tensors the other lacks (e.g. AdaptFormer vs
    SG-Adapter runs), or one tensor has another shape: a one-line error, nothing written."""
    lift = save_state_dict(_state(0, {"enc.adapter.down.weight": (2, 5)}), tmp_path / "lift.safetensors")
    sage = save_state_dict(_state(1, {"enc.adapter.down_t.weight": (2, 5)}), tmp_path / "sage.safetensors")
    out = tmp_path / "mono"
    _fails(capsys, ["monosoup", "--w1", lift, "--w0", sage, "--device", "cpu", "--out", out],
           "different architectures", "'enc.adapter.down.weight'", "'enc.adapter.down_t.weight'")
    wide = _state(2)
    wide["head.weight"] = torch.zeros(4, 6)
    wide = save_state_dict(wide, tmp_path / "wide.safetensors")
    _fails(capsys, ["monosoup", "--w1", wide, "--w0", lift, "--device", "cpu", "--out", out],
           "tensor 'head.weight' has shape (3, 6) in W0, (4, 6) in W1")
    other = save_state_dict({"x.weight": torch.ones(2, 2)}, tmp_path / "other.safetensors")
    _fails(capsys, ["monosoup", "--w1", other, "--w0", lift, "--device", "cpu", "--out", out], "share no tensor")
    assert not out.exists() and not list(tmp_path.glob(".mono*"))


def test_monosoup_keeps_tensors_legitimately_absent_in_w0(tmp_path, capsys):
    """docs/methods.md §3.3/§3.5: adapters have no pretrained counterpart (W1 adds tensors),
    and W1 may hold only its trained part of W0; both run, the extra tensors kept at W1."""
    w0 = _state(0)
    w1 = {k: v + 0.1 * torch.randn_like(v) for k, v in w0.items()}
    w1["enc.adapter.up.weight"] = torch.randn(5, 2)
    f0 = save_state_dict(w0, tmp_path / "w0.safetensors")
    f1 = save_state_dict(w1, tmp_path / "w1.safetensors")
    assert cli.main(["monosoup", "--w1", str(f1), "--w0", str(f0), "--device", "cpu",
                     "--out", str(tmp_path / "m")]) == 0
    log = {e["tensors"][0]: e for e in json.loads((tmp_path / "m" / "monosoup_log.json").read_text())}
    assert log["enc.adapter.up.weight"] == {"tensors": ["enc.adapter.up.weight"], "edited": False,
                                            "reason": "missing in W0"}
    assert log["enc.fc.weight"]["edited"] and log["head.weight"]["edited"]
    edited = load_weights_file(tmp_path / "m" / "model.safetensors")
    assert torch.equal(edited["enc.adapter.up.weight"], w1["enc.adapter.up.weight"])
    # W1 = only the trained head of W0 (W0 holds the encoder too)
    f_head = save_state_dict({"head.weight": w1["head.weight"]}, tmp_path / "head.safetensors")
    assert cli.main(["monosoup", "--w1", str(f_head), "--w0", str(f0), "--device", "cpu",
                     "--out", str(tmp_path / "m2")]) == 0
    assert set(load_weights_file(tmp_path / "m2" / "model.safetensors")) == {"head.weight"}
    check_bases(w0, w0)  # identical: fine


def test_soup_of_another_architecture_is_refused(tmp_path, capsys):
    a = save_state_dict(_state(0, {"enc.adapter.down.weight": (2, 5)}), tmp_path / "a.safetensors")
    b = save_state_dict(_state(1, {"enc.adapter.down_t.weight": (2, 5)}), tmp_path / "b.safetensors")
    wide = _state(2, {"enc.adapter.down.weight": (3, 5)})
    c = save_state_dict(wide, tmp_path / "c.safetensors")
    _fails(capsys, ["soup", a, b, "--out", tmp_path / "s"], "keys differ", "one architecture")
    _fails(capsys, ["soup", a, c, "--out", tmp_path / "s"], "tensor 'enc.adapter.down.weight' has shape (3, 5)")
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".s.*"))


@pytest.mark.slow
def test_observation_6_replayed_on_fit_runs(tmp_path, capsys):
    """`monosoup --w1 runs/lift1 --w0 runs/sage1` (AdaptFormer vs SG-Adapter runs) is refused
    before anything is written; the same W1 against its own zero-shot weights still runs."""
    from longtail.methods.finetune.presets import build_config
    from longtail.methods.finetune.runner import fit

    data = {"root": str(tmp_path / "data"), "device": "cpu", "progress": False, "epochs": 1, "lr": 0.01,
            "data_options.num_classes": 4, "data_options.n_max": 16, "data_options.imbalance_ratio": 4,
            "data_options.test_per_class": 8}
    for method in ("lift", "sage"):
        fit(build_config("synthetic_images", "tiny_clip", method, data), out=tmp_path / f"{method}1", report=False)
    out = tmp_path / "mono"
    _fails(capsys, ["monosoup", "--w1", tmp_path / "lift1", "--w0", tmp_path / "sage1", "--device", "cpu",
                    "--out", out], "different architectures", "adapter.down")
    assert not out.exists() and not list(tmp_path.glob(".mono*"))
    assert cli.main(["monosoup", "--w1", str(tmp_path / "lift1"), "--w0", "zero-shot", "--device", "cpu",
                     "--out", str(out), "--no-report"]) == 0
    log = json.loads((out / "monosoup_log.json").read_text())
    assert any(e["edited"] for e in log) and (out / "metrics.json").is_file()
    assert not (out / "report.html").exists()  # --no-report


@pytest.mark.parametrize("text", ["2001-13-01", "!!float abc", "!!timestamp x", "!!int x"])
def test_yaml_values_pyyaml_cannot_construct(tmp_path, capsys, text):
    """PyYAML raises ValueError/AttributeError (not YAMLError) for these: still one line."""
    _fails(capsys, ["stats", "/nonexistent/x", f"many={text}"], "expected an integer")
    (tmp_path / "r.yaml").write_text(f"method: uniform\ningredients: [a.safetensors]\nparameters: {{lam: {text}}}\n")
    with pytest.raises(DataError, match="r.yaml: not valid YAML"):
        read_yaml(tmp_path / "r.yaml")
    _fails(capsys, ["soup", "--recipe", tmp_path / "r.yaml", "--out", tmp_path / "s"], "not valid YAML")


def test_soup_parameters_are_typed_and_named(tmp_path, capsys):
    a = save_state_dict(_state(0), tmp_path / "a.safetensors")
    b = save_state_dict(_state(1), tmp_path / "b.safetensors")
    out = tmp_path / "s"
    _fails(capsys, ["soup", "-m", "recursive", a, b, "lam=abc", "--out", out], "lam='abc': expected a number")
    _fails(capsys, ["soup", a, b, "lamda=0.5", "--out", out], "has no parameter 'lamda'")
    _fails(capsys, ["soup", "-m", "wise", a, "--base", b, "alpha=[0, x]", "--out", out], "alpha=")
    _fails(capsys, ["soup", "-m", "weighted", a, b, "weights=[1, two]", "--out", out], "expected a number")
    assert not out.exists()
    assert cli.main(["soup", "-m", "wise", str(a), "--base", str(b), "alpha=[0, 1]", "--out", str(out)]) == 0
    assert (out / "wise_alpha_0" / "model.safetensors").is_file()
