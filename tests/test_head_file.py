"""One head-file layout and one writer (issue 18, item 2): probe runs and exports write heads with
`heads.save_head`; probe heads saved the old way (both heads prefixed in one file) still load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from longtail.methods.heads import CosineHead, LinearHead, load_head, save_head
from longtail.methods.probe.model import Probe


@pytest.mark.parametrize("head", [CosineHead(5, 7, bias=torch.arange(5.0), scale=16.0),
                                  LinearHead(5, 7, generator=torch.Generator().manual_seed(0))])
def test_save_head_round_trips_and_never_overwrites(head, tmp_path):
    save_head(tmp_path / "h.safetensors", head, list("abcde"))
    again, names = load_head(tmp_path / "h.safetensors")
    x = torch.randn(4, 7)
    torch.testing.assert_close(again(x), head(x))
    assert names == list("abcde") and type(again) is type(head)
    with pytest.raises(Exception, match="already exists"):
        save_head(tmp_path / "h.safetensors", head)


def test_a_probe_saved_before_the_one_head_file_still_loads(tmp_path):
    gen = torch.Generator().manual_seed(1)
    head, zero_shot = CosineHead(3, 4, generator=gen, scale=20.0), LinearHead(3, 4, generator=gen, use_bias=False)
    probe = Probe(head, np.array([5, 3, 1]), alpha=0.7, posthoc_tau=0.5, zero_shot=zero_shot, class_names=list("xyz"))
    features = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    probe.save(tmp_path / "new")
    # the layout of format 1: one file with 'head.' and 'zero_shot.' tensors, the specs in head.json
    old = tmp_path / "old"
    old.mkdir()
    save_file({"head.weight": head.weight.detach().contiguous(), "zero_shot.weight": zero_shot.weight.detach().contiguous()},
              str(old / "head.safetensors"))
    meta = json.loads((tmp_path / "new" / "head.json").read_text())
    (old / "head.json").write_text(json.dumps({**meta, "format": 1}))
    for folder in ("new", "old"):
        np.testing.assert_allclose(Probe.load(tmp_path / folder).logits(features), probe.logits(features), atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["head.json", "head.safetensors", "zero_shot.safetensors"]
