"""The fit layout on disk: one FitConfig per run folder, model.safetensors + model_config.json
(names no peft loader mistakes for its own), and folders written before the rename
(adapter_model.safetensors + adapter_config.json, the config in both files) still load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from longtail.cli import main
from longtail.errors import DataError
from longtail.io import read_yaml
from longtail.methods.finetune.checkpoint import (
    LEGACY_WEIGHTS,
    LEGACY_WEIGHTS_CONFIG,
    WEIGHTS,
    WEIGHTS_CONFIG,
)
from longtail.methods.finetune.loading import fit_config_of, model_config_of
from longtail.methods.finetune.runner import config_from_run
from longtail.methods.predictor import Predictor
from longtail.models.preprocess import InputSpec
from tests.conftest import copy_runs


def to_previous_format(folder):
    """Rewrite a fit-layout folder as longtail wrote it before the rename: the peft-like file
    names and the FitConfig inside the weights' config too (also in a fit run)."""
    cfg, spec = model_config_of(folder)
    (folder / WEIGHTS).rename(folder / LEGACY_WEIGHTS)
    (folder / WEIGHTS_CONFIG).unlink()
    old = {"kind": "fit", "config": cfg.to_dict(), "input_spec": spec.to_dict()}
    (folder / LEGACY_WEIGHTS_CONFIG).write_text(json.dumps(old))
    return folder


def eval_json(folder, capsys) -> dict:
    capsys.readouterr()
    assert main(["eval", str(folder), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_new_run_folder_holds_one_config(tiny_runs):
    ft0, soup = tiny_runs["root"] / "ft0", tiny_runs["root"] / "soup"
    names = {p.name for p in ft0.iterdir()}
    assert {WEIGHTS, WEIGHTS_CONFIG, "config.yaml"} <= names
    assert not names & {LEGACY_WEIGHTS, LEGACY_WEIGHTS_CONFIG}  # the peft names only in a peft export
    meta = json.loads((ft0 / WEIGHTS_CONFIG).read_text())
    assert set(meta) == {"kind", "input_spec"}  # the FitConfig is config.yaml's alone
    assert fit_config_of(ft0) == config_from_run(ft0)  # evaluation and --resume read the same copy
    # a soup's config.yaml is the soup's; the model it holds records the ingredients' FitConfig
    assert read_yaml(soup / "config.yaml")["kind"] == "soup"
    soup_meta = json.loads((soup / WEIGHTS_CONFIG).read_text())
    assert soup_meta["input_spec"] == meta["input_spec"]
    assert fit_config_of(soup).to_dict() == soup_meta["config"] == config_from_run(ft0).to_dict()


def test_a_run_folder_of_the_previous_format_evaluates_predicts_and_soups(tiny_runs, tmp_path, capsys):
    new_ft0, new_soup = tiny_runs["root"] / "ft0", tiny_runs["root"] / "soup"
    ft0, ft1, soup = (to_previous_format(f) for f in copy_runs(tiny_runs, tmp_path, "ft0", "ft1", "soup"))
    assert not (ft0 / WEIGHTS).exists() and (ft0 / LEGACY_WEIGHTS_CONFIG).is_file()
    saved = json.loads((ft0 / "metrics.json").read_text())
    assert eval_json(ft0, capsys)["all"] == pytest.approx(saved["all"])
    assert eval_json(soup, capsys)["all"] == pytest.approx(json.loads((soup / "metrics.json").read_text())["all"])
    for old, new in ((ft0, new_ft0), (soup, new_soup)):
        old_logits, labels = Predictor.from_run(old, device="cpu").test()
        new_logits, new_labels = Predictor.from_run(new, device="cpu").test()
        np.testing.assert_allclose(old_logits, new_logits, atol=1e-6, rtol=0)
        assert np.array_equal(labels, new_labels)
    # a soup of old-format runs is written in the new layout and loads
    out = tmp_path / "uniform"
    assert main(["soup", "-m", "uniform", str(ft0), str(ft1), "--device", "cpu", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {WEIGHTS, WEIGHTS_CONFIG} <= names and not names & {LEGACY_WEIGHTS, LEGACY_WEIGHTS_CONFIG}
    assert fit_config_of(out) == fit_config_of(ft0)


def test_a_damaged_weights_config_is_one_line(tiny_runs, tmp_path, capsys):
    (soup,) = copy_runs(tiny_runs, tmp_path, "soup")
    meta = json.loads((soup / WEIGHTS_CONFIG).read_text())
    (soup / WEIGHTS_CONFIG).write_text(json.dumps({k: v for k, v in meta.items() if k != "config"}))
    with pytest.raises(DataError, match="records no fit config"):
        fit_config_of(soup)
    (soup / WEIGHTS_CONFIG).write_text(json.dumps({**meta, "input_spec": {**meta["input_spec"], "sizes": 3}}))
    capsys.readouterr()
    assert main(["eval", str(soup)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown input spec key 'sizes'" in err


def test_input_spec_round_trip_and_bad_input():
    spec = InputSpec(size=224, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), test_resize_ratio=256 / 224,
                     interpolation="bilinear")
    saved = json.loads(json.dumps(spec.to_dict()))  # saved as a plain dict
    assert InputSpec.from_dict(saved) == spec and spec.resize == 256
    older = {k: v for k, v in saved.items() if k != "interpolation"}  # saved before the option existed
    assert InputSpec.from_dict(older).interpolation == "bicubic"
    with pytest.raises(DataError, match="unknown input spec key 'crop'"):
        InputSpec.from_dict({**saved, "crop": 3}, "RUN/model_config.json")
    with pytest.raises(DataError, match="RUN/model_config.json: the input spec has no 'std'"):
        InputSpec.from_dict({k: v for k, v in saved.items() if k != "std"}, "RUN/model_config.json")
    for bad in ({"size": 0}, {"mean": [0.5]}, {"std": "x"}, {"interpolation": "cubicle"}, {"size": "big"}):
        with pytest.raises(DataError, match="input spec"):
            InputSpec.from_dict({**saved, **bad})
    with pytest.raises(DataError, match="not a mapping"):
        InputSpec.from_dict([224])
