"""Two-process DDP on CPU (gloo, torchrun's environment) gives the same weights as one process, same global
batch, including an uneven last batch (36 images, batch 8: the second process gets only padding).
The one-process reference runs the same code in the test's own process (one torch thread, as
OMP_NUM_THREADS=1 gives the torchrun workers): a third interpreter start-up would check nothing more."""

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


    def fit_and_save(root, out):
        cfg = build_config("synthetic_images", "tiny_clip", "sage", {
            "data_options": {"num_classes": 4, "n_max": 16, "imbalance_ratio": 4, "test_per_class": 2, "size": 16},
            "root": root, "batch_size": 8, "epochs": 2, "augment": "none", "progress": False,
            "backbone_options": {"image_size": 16, "patch_size": 8}, "device": "cpu"})
        result = train(cfg)
        rank = 0
        if torch.distributed.is_initialized():
            assert torch.distributed.get_world_size() == 2
            rank = torch.distributed.get_rank()
            # gloo's worker threads left running at interpreter exit abort the process now and
            # then ("terminate called without an active exception", exit code -6: pytorch#190489)
            torch.distributed.destroy_process_group()
        if rank == 0:
            state = {k: v.contiguous() for k, v in result.model.trainable_state_dict().items()}
            save_file(state, out, metadata={"processes": str(result.metrics["throughput"]["num_processes"])})


    if __name__ == "__main__":
        fit_and_save(sys.argv[1], sys.argv[2])
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
    script_code = {"__name__": "ddp_fit"}
    exec(compile(SCRIPT, str(script), "exec"), script_code)  # the same function the workers run
    assert not torch.distributed.is_initialized() and torch.get_num_threads() == 1
    script_code["fit_and_save"](root, str(tmp_path / "one.safetensors"))  # writes the data the workers read
    # the two workers with the environment torchrun gives them (its launcher process adds nothing
    # longtail reads, and an interpreter start-up)
    env.update({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())})
    workers = [subprocess.Popen([sys.executable, str(script), root, str(tmp_path / "two.safetensors")],
                                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for r in range(2)]
    logs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(err[-3000:] for _, err in logs)
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
