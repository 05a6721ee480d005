"""Peak memory of a streaming uniform soup vs loading every ingredient at once; MonoSoup time.

Writes N random checkpoints shaped like the CLIP ViT-B/16 image tower (~86M parameters,
Hugging Face key names) to a temporary folder, then measures in separate subprocesses
(peak RSS = VmHWM of /proc/self/status, minus that of a process that only does the imports):
  streaming  longtail.soups.merge.merge("uniform", files)   (one ingredient at a time)
  all-at-once  safetensors load_file of every file, torch.stack(...).mean(0)  (the naive peer)
and times MonoSoup (erank mode, stacked q/k/v, float32 SVD) on one W0/W1 pair on CPU
against a plain float32 SVD of the same matrices (its unavoidable core cost).

    python benchmarks/soup_memory.py            # 10 fp32 checkpoints (~3.4 GB in /tmp)
    python benchmarks/soup_memory.py --n 4 --dtype float16 --tmp /somewhere
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CHILD = r"""
import json, resource, sys, time
import torch
from longtail.soups.merge import merge
from safetensors.torch import load_file
mode, files = sys.argv[1], sys.argv[2:]
t = time.perf_counter()
if mode == "streaming":
    out, _ = merge("uniform", files)
elif mode == "all-at-once":
    states = [load_file(f) for f in files]
    out = {k: torch.stack([s[k].float() for s in states]).mean(0).to(states[0][k].dtype)
           for k in states[0]}
else:
    out = {}
secs = time.perf_counter() - t
n = sum(v.numel() for v in out.values())
def peak_kib():  # VmHWM is this process's own high-water mark; ru_maxrss would include the
    try:          # parent's RSS at fork (Linux keeps it across exec)
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kib": peak_kib(),
                  "seconds": secs, "params": n}))
"""


def vit_b16_shapes() -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Key -> (shape, dtype) of the HF CLIP ViT-B/16 vision tower, built on the meta device."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.device("meta"):
        model = CLIPVisionModel(CLIPVisionConfig(patch_size=16, image_size=224))
    return {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}


def random_state(shapes, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: (torch.randn(s, generator=g) * 0.02).to(dtype) if d.is_floating_point else torch.zeros(s, dtype=d)
        for k, (s, d) in shapes.items()
    }


def measure(mode: str, files: list[str]) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, mode, *files], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def monosoup_timing(shapes) -> dict:
    from longtail.soups.monosoup import MonoSoupConfig, edit_groups, monosoup

    w0 = random_state(shapes, 100, torch.float32)
    g = torch.Generator().manual_seed(101)
    w1 = {k: v + 0.001 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in w0.items()}
    cfg = MonoSoupConfig(device="cpu")
    t, c = time.perf_counter(), time.process_time()
    _, log = monosoup(w0, w1, cfg)
    mono, mono_cpu = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()  # peer: bare SVDs of the same (stacked) updates
    for group in edit_groups(list(w1), cfg):
        if w1[group[0]].ndim >= 2 and w1[group[0]].is_floating_point():
            d = torch.cat([(w1[k] - w0[k]).reshape(w1[k].shape[0], -1) for k in group])
            torch.linalg.svd(d, full_matrices=False)
    svd, svd_cpu = time.perf_counter() - t, time.process_time() - c
    return {"monosoup_s": mono, "bare_svd_s": svd, "monosoup_cpu_s": mono_cpu, "bare_svd_cpu_s": svd_cpu,
            "edited": sum(bool(e["edited"]) for e in log)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="number of checkpoints")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--tmp", default=None, help="folder for the temporary checkpoints")
    parser.add_argument("--skip-monosoup", action="store_true")
    parser.add_argument("--skip-memory", action="store_true", help="only time MonoSoup")
    args = parser.parse_args()
    from longtail.soups.merge import save_state_dict

    if args.skip_memory:
        shapes = vit_b16_shapes()
        _print_monosoup(monosoup_timing(shapes))
        return
    dtype = getattr(torch, args.dtype)
    shapes = vit_b16_shapes()
    params = sum(s.numel() for s, d in shapes.values() if d.is_floating_point)
    model_mib = params * dtype.itemsize / 2**20
    need = args.n * model_mib / 1024
    folder = Path(tempfile.mkdtemp(prefix="soup_memory_", dir=args.tmp))
    free = shutil.disk_usage(folder).free / 2**30
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.n} checkpoints of "
          f"{params / 1e6:.1f}M params ({args.dtype}, {model_mib:.0f} MiB each, {need:.1f} GiB) in {folder} "
          f"({free:.0f} GiB free)")
    if need > 0.8 * free:
        raise SystemExit("not enough disk for the checkpoints; use --dtype float16, a smaller --n or --tmp")
    try:
        files = []
        for i in range(args.n):
            files.append(str(save_state_dict(random_state(shapes, i, dtype), folder / f"ckpt{i}.safetensors")))
        base = measure("baseline", [])
        rows = {m: measure(m, files) for m in ("streaming", "all-at-once")}
        print(f"baseline RSS (python + imports): {base['peak_kib'] / 1024:.0f} MiB")
        for mode, r in rows.items():
            extra = (r["peak_kib"] - base["peak_kib"]) / 1024
            print(f"{mode:12s} peak RSS {r['peak_kib'] / 1024:7.0f} MiB  above baseline {extra:7.0f} MiB"
                  f" = {extra / model_mib:5.2f} models  ({r['seconds']:.1f} s)")
        s, a = (rows[m]["peak_kib"] - base["peak_kib"] for m in ("streaming", "all-at-once"))
        print(f"ratio all-at-once / streaming peak memory above baseline: {a / s:.2f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not args.skip_monosoup:
        _print_monosoup(monosoup_timing(shapes))


def _print_monosoup(t: dict) -> None:
    print(f"MonoSoup ViT-B/16 on CPU: {t['monosoup_s']:.1f} s for {t['edited']} edited tensors/groups; "
          f"bare float32 SVDs of the same matrices {t['bare_svd_s']:.1f} s "
          f"(MonoSoup / SVD = {t['monosoup_s'] / t['bare_svd_s']:.2f}x); CPU time (all threads) "
          f"{t['monosoup_cpu_s']:.1f} s vs {t['bare_svd_cpu_s']:.1f} s")


if __name__ == "__main__":
    main()
