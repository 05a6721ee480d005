"""Run folders, config overrides and registries."""

from dataclasses import dataclass, field
from typing import Any

import pytest

from longtail.config import apply_overrides, parse_overrides
from longtail.errors import ConfigError, DataError, UnknownNameError
from longtail.io import read_yaml, write_yaml
from longtail.methods.run_kinds import evaluate_run
from longtail.registry import Registry
from longtail.runs import FORMAT_VERSION, create_run, load_run


@dataclass
class _Cfg:
    epochs: int = 10
    lr: float = 0.01
    name: str = "x"


def test_run_folder_is_complete_and_never_overwritten(tmp_path):
    out = tmp_path / "run1"
    run = create_run(out, "probe", _Cfg(), seed=3)
    assert not out.exists()  # staged until finished
    folder = run.finish({"all": 0.5})
    loaded = load_run(folder)
    assert loaded["config"] == {"kind": "probe", "format_version": FORMAT_VERSION,
                                "epochs": 10, "lr": 0.01, "name": "x"}
    assert loaded["env"]["seed"] == 3 and loaded["env"]["packages"]["torch"]
    assert loaded["metrics"] == {"all": 0.5}
    assert loaded["status"]["status"] == "finished"
    with pytest.raises(ConfigError, match="already exists"):
        create_run(out, "probe", _Cfg())


def test_failed_staged_run_leaves_nothing(tmp_path):
    out = tmp_path / "run2"
    with pytest.raises(RuntimeError):
        with create_run(out, "probe", _Cfg()):
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_unstaged_run_can_resume(tmp_path):
    out = tmp_path / "fit"
    create_run(out, "fit", _Cfg(), staged=False)
    assert (out / "status.json").exists()
    again = create_run(out, "fit", _Cfg(), staged=False, resume=True)
    assert again.dir == out


def test_overrides_are_typed_and_checked():
    values = parse_overrides(["epochs=1", "lr=0.02", "name=abc"])
    assert values == {"epochs": 1, "lr": 0.02, "name": "abc"}
    assert parse_overrides(["on-corrupt=skip", "flag=true", "x=none", "ir=0.5"]) == {
        "on_corrupt": "skip", "flag": True, "x": None, "ir": 0.5}
    assert apply_overrides(_Cfg(), values) == _Cfg(1, 0.02, "abc")
    with pytest.raises(ConfigError, match="unknown config key 'bogus'; valid keys: epochs, lr, name"):
        apply_overrides(_Cfg(), {"bogus": 1})
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])


@dataclass
class _Rich:
    lr: float = 0.1
    steps: int | None = None
    mode: str | float | None = None
    exponents: list[int] | None = None
    normalize: bool = True
    loss_options: dict[str, Any] = field(default_factory=lambda: {"tau": 1.0})


def test_one_grammar_dotted_keys_and_coercion():
    cfg = apply_overrides(_Rich(), parse_overrides(
        ["lr=1", "steps=none", "mode=0.5", "exponents=[0, 1]", "loss_options.tau=2", "loss_options.gamma=0.1"]))
    assert cfg == _Rich(lr=1.0, steps=None, mode=0.5, exponents=[0, 1], loss_options={"tau": 2, "gamma": 0.1})
    assert isinstance(cfg.lr, float)
    assert apply_overrides(_Rich(), {"mode": "auto"}).mode == "auto"
    # a whole dict replaced, then one sub-key updated
    assert apply_overrides(_Rich(), {"loss_options": {"a": 1}, "loss_options.b": 2}).loss_options == {"a": 1, "b": 2}
    assert _Rich().loss_options == {"tau": 1.0}  # the default is not mutated


@pytest.mark.parametrize("pair, message", [
    ("lr=abc", "lr='abc': expected a number"),
    ("steps=ten", "steps='ten': expected an integer or none"),
    ("normalize=maybe", "normalize='maybe': expected true/false"),
    ("lr.x=1", "'lr' is not a dict field; only loss_options take dotted sub-keys"),
    ("loss_option.tau=1", "unknown config key 'loss_option.tau'"),
])
def test_one_grammar_bad_values_are_one_line_errors(pair, message):
    with pytest.raises(ConfigError) as err:
        apply_overrides(_Rich(), parse_overrides([pair]))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_saved_config_records_kind_and_version(tmp_path):
    folder = create_run(tmp_path / "r", "probe", _Cfg()).finish({"all": 1.0})
    raw = read_yaml(folder / "config.yaml")
    assert raw["kind"] == "probe" and raw["format_version"] == FORMAT_VERSION
    # a run written before format versions loads as version 0 (same layout)
    write_yaml(folder / "config.yaml", {k: v for k, v in raw.items() if k != "format_version"})
    assert load_run(folder)["config"]["format_version"] == 0
    write_yaml(folder / "config.yaml", {**raw, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(DataError, match="newer than this longtail"):
        load_run(folder)
    write_yaml(folder / "config.yaml", {"epochs": 1})
    with pytest.raises(DataError, match="records no run kind"):
        load_run(folder)


def test_evaluate_run_of_unknown_kind_lists_the_kinds(tmp_path):
    folder = create_run(tmp_path / "r", "mystery", _Cfg()).finish({"all": 1.0})
    with pytest.raises(UnknownNameError, match="unknown run kind 'mystery'; choose from: .*fit.*probe"):
        evaluate_run(folder)


def test_registry_lists_valid_names():
    reg: Registry = Registry("loss")
    reg.register("ce", 1)
    reg.register("la")(2)
    assert reg.get("la") == 2 and "ce" in reg and reg.names() == ["ce", "la"]
    with pytest.raises(UnknownNameError, match="unknown loss 'x'; choose from: ce, la"):
        reg.get("x")
    with pytest.raises(ValueError):
        reg.register("ce", 3)
