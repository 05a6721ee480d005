"""Two-process DDP on CPU (gloo, torchrun's environment) gives the same weights as one process, same global
batch, including an uneven last batch (36 images, batch 8: the second process gets only padding).

The one-process reference runs in the test's own process (one torch thread, as OMP_NUM_THREADS=1 gives
torchrun's workers). The two workers are forked from it with torchrun's environment and a fresh accelerate
state (conftest.run_torchrun_workers) and join a real gloo process group over TCP."""

from __future__ import annotations

import pytest
import torch
from conftest import run_torchrun_workers
from safetensors.torch import load_file

from longtail.methods.finetune import build_config, train


def fit_and_save(root: str, out: str) -> None:
    """What each process runs: a 2-epoch Sage fit on a 4-class long tail; rank 0 saves the weights."""
    from safetensors.torch import save_file

    cfg = build_config("synthetic_images", "tiny_clip", "sage", {
        "data_options": {"num_classes": 4, "n_max": 16, "imbalance_ratio": 4, "test_per_class": 2, "size": 16},
        "root": root, "batch_size": 8, "epochs": 2, "augment": "none", "progress": False,
        "backbone_options": {"image_size": 16, "patch_size": 8}, "device": "cpu"})
    result = train(cfg)
    rank = 0
    if torch.distributed.is_initialized():
        assert torch.distributed.get_world_size() == 2
        rank = torch.distributed.get_rank()
        # leave no group (and no gloo threads) behind: a worker that exits with one running can
        # abort ("terminate called without an active exception": pytorch#190489)
        torch.distributed.destroy_process_group()
    if rank == 0:
        state = {k: v.contiguous() for k, v in result.model.trainable_state_dict().items()}
        save_file(state, out, metadata={"processes": str(result.metrics["throughput"]["num_processes"])})


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path):
    root = str(tmp_path / "data")
    assert not torch.distributed.is_initialized() and torch.get_num_threads() == 1
    fit_and_save(root, str(tmp_path / "one.safetensors"))  # also writes the data the workers read
    run_torchrun_workers(fit_and_save, (root, str(tmp_path / "two.safetensors")),
                         [tmp_path / f"rank{r}.log" for r in range(2)])
    from safetensors import safe_open

    for name, processes in (("one", "1"), ("two", "2")):
        with safe_open(tmp_path / f"{name}.safetensors", "pt") as f:
            assert f.metadata()["processes"] == processes, name
    one, two = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    assert one.keys() == two.keys()
    moved = max(float((one[k] - one["w_zs"]).abs().max()) for k in ("head.weight",))
    assert moved > 1e-4  # training happened
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
