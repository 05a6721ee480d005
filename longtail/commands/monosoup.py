"""`longtail monosoup`: MonoSoup, a data-free edit of one fine-tuned checkpoint (docs/methods.md §3)."""

from __future__ import annotations

import argparse

HELP = "MonoSoup: re-weight each layer's fine-tuning update by its SVD spectrum (one checkpoint)"
DESCRIPTION = """\
Edit a fine-tuned checkpoint W1 towards its pretrained/zero-shot weights W0 without data:
each layer's update W1 - W0 is split by a thin SVD into its top-k part and the rest, which
are re-weighted from the spectrum (k from the effective rank by default, or an energy
threshold). Biases, LayerNorms, scalars, tensors missing in W0 (adapters) and untouched
tensors are kept. W0 and W1 must be one architecture: tensors missing on both sides, or a
tensor with another shape, are an error naming the first one. q/k/v projections are edited as one stacked matrix by default (as the fused
reference implementation). SVD runs in float32 (or float64) on the GPU when present.
Writes a new run folder (kind "monosoup") with the edited weights, monosoup_log.json (k,
energy, lambdas per tensor); an edit of a fit run is in the fit layout and is evaluated
(metrics.json, per_class.csv, report.html); --eval also evaluates W1 side by side.
Settings are KEY=VALUE pairs (mode=energy energy=0.9); the flags are the same.

W0/W1: .safetensors files or run folders; --w0 zero-shot rebuilds W0 (pretrained encoder
+ text-initialised head) from W1's run. --lora-scaling S: W1 holds LoRA pairs
(lora_A/lora_B); the dense update S * B A is formed on W0 and edited.

examples:
  longtail monosoup --w1 runs/full_ft --w0 zero-shot --eval --out runs/mono
  longtail monosoup --w1 ft.safetensors --w0 pretrained.safetensors mode=energy energy=0.9
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from longtail.config import add_override_arguments

    p.add_argument("--w1", required=True, help="fine-tuned checkpoint (.safetensors or run folder)")
    p.add_argument("--w0", required=True, help="pretrained checkpoint, or 'zero-shot' (rebuilt from W1's run)")
    add_override_arguments(p, "mode=energy energy=0.9; fields: mode, energy, qkv, precision")
    p.add_argument("--mode", help="rank rule: erank (default) or energy (= mode=...)")
    p.add_argument("--energy", type=float, help="energy mode: fraction R (default 0.8)")
    p.add_argument("--qkv", choices=("stacked", "separate"), help="q/k/v handling (default stacked)")
    p.add_argument("--precision", choices=("float32", "float64"), help="SVD precision (default float32)")
    p.add_argument("--lora-scaling", type=float, help="W1 holds LoRA pairs: dense update = S * B @ A")
    p.add_argument("--eval", action="store_true", help="also evaluate W1 and compare it with the edit")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--out", help="run folder to create (default runs/monosoup-TIMESTAMP)")
    p.add_argument("--no-report", action="store_true", help="skip report.html")


def build_config(args: argparse.Namespace):
    """MonoSoupConfig from the flags (sugar) and the KEY=VALUE overrides (which win)."""
    from longtail.config import apply_overrides, command_overrides
    from longtail.soups.monosoup import MonoSoupConfig

    sugar = {k: getattr(args, k) for k in ("mode", "energy", "qkv", "precision", "device")}
    return apply_overrides(MonoSoupConfig(), command_overrides(args.overrides, sugar))


def run(args: argparse.Namespace) -> int:
    from longtail.soups.monosoup import run_monosoup
    from longtail.soups.soup_run import format_table

    result = run_monosoup(args.w1, args.w0, build_config(args), args.out, args.lora_scaling, args.eval,
                          report=not args.no_report)
    if result.comparison:
        print(format_table(result.comparison))
    print(f"MonoSoup edited {result.edited} of {len(result.log)} tensors/groups; written to {result.folder}")
    return 0
