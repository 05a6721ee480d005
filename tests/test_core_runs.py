"""Run folders, config overrides and registries."""

from dataclasses import dataclass

import pytest

from longtail.config import parse_overrides, update_dataclass
from longtail.errors import ConfigError, UnknownNameError
from longtail.registry import Registry
from longtail.runs import create_run, load_run


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
    assert loaded["config"] == {"kind": "probe", "epochs": 10, "lr": 0.01, "name": "x"}
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
    assert update_dataclass(_Cfg(), values) == _Cfg(1, 0.02, "abc")
    with pytest.raises(ConfigError, match="unknown config key bogus; valid keys: epochs, lr, name"):
        update_dataclass(_Cfg(), {"bogus": 1})
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])


def test_registry_lists_valid_names():
    reg: Registry = Registry("loss")
    reg.register("ce", 1)
    reg.register("la")(2)
    assert reg.get("la") == 2 and "ce" in reg and reg.names() == ["ce", "la"]
    with pytest.raises(UnknownNameError, match="unknown loss 'x'; choose from: ce, la"):
        reg.get("x")
    with pytest.raises(ValueError):
        reg.register("ce", 3)
