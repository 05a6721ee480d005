"""Two-process DDP on CPU (gloo, via torchrun) gives the same weights as one process, same global
batch, including an uneven last batch (36 images, batch 8: the second process gets only padding)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from safetensors.torch import save_file
    from longtail.methods.finetune import build_config, train

    root, out = sys.argv[1], sys.argv[2]
    cfg = build_config("synthetic_images", "tiny_clip", "sage", {
        "data_options": {"num_classes": 4, "n_max": 16, "imbalance_ratio": 4, "test_per_class": 2, "size": 16},
        "root": root, "batch_size": 8, "epochs": 2, "augment": "none", "progress": False,
        "backbone_options": {"image_size": 16, "patch_size": 8}, "device": "cpu"})
    result = train(cfg)
    if torch.distributed.is_initialized():
        assert torch.distributed.get_world_size() == 2
        if torch.distributed.get_rank() != 0:
            sys.exit(0)
    state = {k: v.contiguous() for k, v in result.model.trainable_state_dict().items()}
    save_file(state, out, metadata={"processes": str(result.metrics["throughput"]["num_processes"])})
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    root = str(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    single = subprocess.run([sys.executable, str(script), root, str(tmp_path / "one.safetensors")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(_free_port()), str(script), root, str(tmp_path / "two.safetensors")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    from safetensors import safe_open

    with safe_open(tmp_path / "two.safetensors", "pt") as f:
        assert f.metadata()["processes"] == "2"
    one, two = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    assert one.keys() == two.keys()
    moved = max(float((one[k] - one["w_zs"]).abs().max()) for k in ("head.weight",))
    assert moved > 1e-4  # training happened
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
