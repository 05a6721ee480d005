"""Fuzz test (issue 13, item 4): random KEY=VALUE pairs and random or damaged files never
give a traceback. Each example must exit 2 with one line on stderr and leave no file behind,
or exit 0 when the input happens to be valid (then the run is complete).

How "valid" is told apart: the KEY=VALUE examples point every command at data that does not
exist, so no example can succeed (a valid config still ends in the one-line "not found");
the file examples accept exit 0 only together with a finished output. Examples are bounded
and derandomized so CI stays within a few seconds; LONGTAIL_FUZZ_EXAMPLES=N runs more.
Nothing touches real data or the network: all files live in temporary folders.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from longtail import cli  # noqa: E402

N = int(os.environ.get("LONGTAIL_FUZZ_EXAMPLES", "0"))


def fuzz(examples: int):
    """Hypothesis settings: `examples` derandomized examples (CI), or N random ones when
    LONGTAIL_FUZZ_EXAMPLES=N; no deadline (the first example pays for imports)."""
    return settings(max_examples=N or examples, deadline=None, derandomize=not N, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    # warnings (e.g. a skipped image, --train = --test) are separate lines; the error is the last, alone
    lines = [line for line in err.splitlines() if line.startswith("longtail ") and ": warning: " not in line]
    assert "Traceback" not in err, err
    if rc != 0:
        assert rc == 2 and len(lines) == 1 and err.endswith(lines[0]), err
    return rc, err


def _left(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ----------------------------------------------------------------------------- KEY=VALUE

# keys whose valid values would point a command at real data or files: never generated
PATH_KEYS = {"data", "dataset", "root", "backbone", "out", "train_list", "test_list", "init_from",
             "val_from", "origin", "templates"}


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in PATH_KEYS]


def _commands() -> dict[str, tuple[list[str], list[str]]]:
    """command -> (argv before the pairs, with {M} = missing data and {O} = output; config keys)."""
    from longtail.data.stats import StatsConfig
    from longtail.methods.finetune.config import FitConfig
    from longtail.methods.probe import ProbeConfig
    from longtail.models.extract import FeaturesConfig
    from longtail.soups.lt_soups import LTSoupsConfig

    return {
        "probe": (["probe", "--train", "{M}/a.npz", "--test", "{M}/b.npz", "--out", "{O}"], _fields(ProbeConfig)),
        "fit": (["fit", "-d", "{M}", "-b", "tiny_clip", "-m", "lift", "--out", "{O}"], _fields(FitConfig)),
        "stats": (["stats", "{M}", "--plot", "{O}/counts.png"], _fields(StatsConfig)),
        "features": (["features", "--data", "{M}", "--backbone", "tiny_clip", "--out", "{O}/f.npz"],
                     _fields(FeaturesConfig)),
        "lt-soups": (["lt-soups", "-d", "{M}", "-b", "tiny_clip", "--out", "{O}"], _fields(LTSoupsConfig)),
    }


COMMANDS = _commands()
KEY_CHARS = st.characters(codec="utf-8", exclude_characters="=")
SUB_KEYS = st.sampled_from(["tau", "ir", "seed", "r", "k_neighbors", "on_corrupt", "x"])
VALUES = st.one_of(
    st.text(max_size=12),
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "no", "maybe", "null", "none", "[1, 2]", "{a: 1}", "[", "2001-01-01",
                     "1e-3", "-1", "0", ".inf", "~", "!!python/name:os.system", "'", "\n", "\t",
                     "2001-13-01", "!!float abc", "!!timestamp x", "&a [*a]", "!!set {a}", "1_000"]),
)


def _keys(fields: list[str]) -> st.SearchStrategy[str]:
    dicts = [f for f in fields if f.endswith("_options")]
    return st.one_of(
        st.sampled_from(fields),
        st.tuples(st.sampled_from(dicts or fields), SUB_KEYS).map(".".join),
        st.text(KEY_CHARS, min_size=1, max_size=10),
    ).filter(lambda k: not k.startswith("-") and k.split(".")[0].replace("-", "_").strip() not in PATH_KEYS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_random_key_value_pairs(command, capsys, monkeypatch, tmp_path):
    prefix, fields = COMMANDS[command]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    @fuzz(20)
    @given(pairs=st.lists(st.tuples(_keys(fields), VALUES).map("=".join), min_size=1, max_size=3))
    def check(pairs):
        with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
            argv = [a.format(M=f"{tmp}/missing", O=f"{tmp}/out") for a in prefix]
            rc, err = _run(capsys, [*argv, *pairs])
            assert rc == 2, err  # the data does not exist: no example can succeed
            assert _left(Path(tmp)) == [], err

    check()
    assert _left(tmp_path) == []  # nothing in the working folder or the cache either


# ----------------------------------------------------------------------------- files


def _damaged(valid: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, or `valid` truncated, with bytes overwritten, or with junk appended."""
    n = len(valid)
    return st.one_of(
        st.binary(max_size=64),
        st.integers(0, n - 1).map(lambda k: valid[:k]),
        st.tuples(st.integers(0, n - 1), st.binary(min_size=1, max_size=8)).map(
            lambda t: valid[: t[0]] + t[1] + valid[t[0] + len(t[1]):]),
        st.binary(min_size=1, max_size=8).map(lambda junk: valid + junk),
    )


def _feature_bytes(suffix: str) -> bytes:
    from longtail.data.features import FeatureSet, save_features

    rng = np.random.default_rng(0)
    fs = FeatureSet(rng.normal(size=(6, 2)).astype(np.float32), np.repeat(np.arange(2), 3),
                    class_names=["a", "b"])
    with tempfile.TemporaryDirectory() as tmp:
        return save_features(fs, Path(tmp) / f"f{suffix}").read_bytes()


def _weights_bytes() -> bytes:
    import torch

    from longtail.soups.merge import save_state_dict

    with tempfile.TemporaryDirectory() as tmp:
        return save_state_dict({"w": torch.ones(2, 2), "b": torch.arange(3)}, Path(tmp) / "w.safetensors").read_bytes()


NPZ, SAFE_FEATURES, WEIGHTS = _feature_bytes(".npz"), _feature_bytes(".safetensors"), _weights_bytes()


@pytest.mark.parametrize("suffix, valid", [(".npz", NPZ), (".safetensors", SAFE_FEATURES)])
def test_damaged_feature_files(suffix, valid, capsys, tmp_path):
    @fuzz(12)
    @given(content=_damaged(valid))
    def check(content):
        with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
            f = Path(tmp) / f"train{suffix}"
            f.write_bytes(content)
            out = Path(tmp) / "run"
            rc, err = _run(capsys, ["probe", "--train", f, "--test", f, "--out", out, "--no-report",
                                    "method=linear", "loss=ce", "max_iter=3", "--device", "cpu"])
            if rc == 0:  # the damage left a readable file: a complete run
                assert (out / "metrics.json").is_file()
            else:
                assert _left(Path(tmp)) == [f.name], err

    check()


def test_damaged_weights_given_to_soup_and_monosoup(capsys, tmp_path):
    @fuzz(12)
    @given(content=_damaged(WEIGHTS), command=st.sampled_from(["soup", "monosoup"]))
    def check(content, command):
        with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
            good, bad = Path(tmp) / "good.safetensors", Path(tmp) / "bad.safetensors"
            good.write_bytes(WEIGHTS)
            bad.write_bytes(content)
            out = Path(tmp) / "out"
            args = [good, bad] if command == "soup" else ["--w1", bad, "--w0", good, "--device", "cpu"]
            rc, err = _run(capsys, [command, *args, "--out", out])
            if rc == 0:
                assert (out / "model.safetensors").is_file()
            else:
                assert _left(Path(tmp)) == ["bad.safetensors", "good.safetensors"], err

    check()


YAML_TEXT = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(["method:", " uniform", "\n", "ingredients:", " - a.safetensors", "[", "{", "}",
                              "- ", "base:", " zero-shot", "parameters:", " {lam: x}", "kind:", " probe",
                              " [1]", ": ", "&a", "*a", "!!binary", "'", "\t", "weight: 2", " 2001-13-01",
                              " !!float x", " !!timestamp x", " !!int x", "lam:"]), max_size=12).map("".join),
)


def test_random_yaml_as_recipe_and_run_config(capsys, tmp_path):
    @fuzz(20)
    @given(text=YAML_TEXT)
    def check(text):
        with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
            recipe = Path(tmp) / "recipe.yaml"
            recipe.write_text(text, encoding="utf-8")
            run = Path(tmp) / "run"
            run.mkdir()
            (run / "config.yaml").write_text(text, encoding="utf-8")
            before = _left(Path(tmp))
            assert _run(capsys, ["soup", "--recipe", recipe, "--out", Path(tmp) / "soup"])[0] == 2
            assert _run(capsys, ["eval", run])[0] == 2  # a run folder with nothing but a config
            assert _left(Path(tmp)) == before

    check()


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


def test_damaged_images_are_data_errors(tmp_path):
    """The image loader (what `features` decodes with): a damaged file is a CorruptImageError
    (a DataError naming it), or decodes to an RGB image."""
    from longtail.data.images import CorruptImageError
    from longtail.data.open_images import open_images

    @fuzz(25)
    @given(content=_damaged(PNG), suffix=st.sampled_from([".png", ".jpg"]))
    def check(content, suffix):
        with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
            for name in ("a", "b"):
                (Path(tmp) / name).mkdir()
                (Path(tmp) / name / f"0{suffix}").write_bytes(content if name == "b" else PNG)
            data = open_images(tmp, progress=False)
            try:
                image = data.load(1)
            except CorruptImageError as err:
                assert "b/0" in str(err) and "\n" not in str(err)
            else:
                assert image.mode == "RGB"

    check()


# ----------------------------------------------------------------------------- issue 22


def _zip_bytes() -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ("a/0.png", "a/1.png", "b/0.png"):
            archive.writestr(name, PNG)
    return buf.getvalue()


ZIP = _zip_bytes()


def test_damaged_zip_archives_are_data_errors(tmp_path):
    """Issue 22 item 6: a damaged zip member (bad CRC, broken deflate stream, truncated entry) is
    a CorruptImageError naming it, which on_corrupt=skip leaves out; a damaged archive is a
    DataError. Nothing else escapes (zipfile.BadZipFile, zlib.error, EOFError did)."""
    import warnings

    from longtail.data.images import CorruptImageError
    from longtail.data.open_images import open_images
    from longtail.errors import DataError

    @fuzz(25)
    @given(content=_damaged(ZIP), skip=st.booleans())
    def check(content, skip):
        with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
            path = Path(tmp) / "d.zip"
            path.write_bytes(content)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    data = open_images(str(path), progress=False, **({"on_corrupt": "skip"} if skip else {}))
                except DataError as err:
                    assert "\n" not in str(err)
                    return
            for i in range(len(data)):
                try:
                    assert data.load(i).mode == "RGB"
                except CorruptImageError as err:
                    assert not skip and data.items[i] in str(err) and "on_corrupt=skip" in str(err)
                    assert "\n" not in str(err)

    check()


FEATURE_VALUES = st.sampled_from([0.0, 1.0, -2.0, 0.5, 1e-38, 1e12, -1e20, 3e38])


def test_random_feature_values_and_labels(capsys, tmp_path):
    """Issue 22 items 9 and 12: all-zero or overflowing features and labels with gaps (with or
    without class names) end in a complete run or one line, never a traceback; values that
    overflow float32 arithmetic, an all-zero training set and (without class names) a label
    above a gap are refused, never trained on."""
    @fuzz(12)
    @given(values=st.lists(FEATURE_VALUES, min_size=12, max_size=12), labels=st.lists(st.integers(0, 5), min_size=6, max_size=6),
           named=st.booleans())
    def check(values, labels, named):
        with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
            arrays = {"features": np.asarray(values, np.float32).reshape(6, 2), "labels": np.asarray(labels)}
            if named:
                arrays["class_names"] = np.asarray([f"c{i}" for i in range(max(labels) + 1)])
            f = Path(tmp) / "train.npz"
            np.savez(f, **arrays)
            out = Path(tmp) / "run"
            rc, err = _run(capsys, ["probe", "--train", f, "--test", f, "--out", out, "--no-report",
                                    "method=linear", "loss=ce", "max_iter=3", "--device", "cpu"])
            features = arrays["features"]
            if np.abs(features).max() > 1e15:
                assert rc == 2 and "overflow float32" in err, err
            elif not features.any():
                assert rc == 2 and "every feature is zero" in err, err
            elif not named and len(set(labels)) <= max(labels):
                assert rc == 2 and "out of range" in err, err
            if rc == 0:
                assert (out / "metrics.json").is_file()
            else:
                assert _left(Path(tmp)) == [f.name], err

    check()


def test_random_csv_labels(tmp_path):
    """Issue 22 item 16: empty labels and repeated class names in a CSV or class-name list are
    one-line DataErrors; no class is ever named ''."""
    from longtail.data.open_images import open_images
    from longtail.errors import DataError

    (tmp_path / "x.png").write_bytes(PNG)

    @fuzz(20)
    @given(labels=st.lists(st.sampled_from(["a", "b", "", " ", "0", "1", "a "]), min_size=1, max_size=5),
           names=st.one_of(st.none(), st.lists(st.sampled_from(["a", "b", "a", ""]), min_size=1, max_size=3)))
    def check(labels, names):
        table = tmp_path / "list.csv"
        table.write_text("path,label\n" + "".join(f"x.png,{label}\n" for label in labels), encoding="utf-8")
        try:
            data = open_images(str(table), progress=False, **({} if names is None else {"class_names": names}))
        except DataError as err:
            assert "\n" not in str(err)
            return
        assert "" not in data.class_names and len(set(data.class_names)) == len(data.class_names)

    check()
