"""`longtail monosoup`: MonoSoup, a data-free edit of one fine-tuned checkpoint (METHODS.md 3)."""

from __future__ import annotations

import argparse

HELP = "MonoSoup: re-weight each layer's fine-tuning update by its SVD spectrum (one checkpoint)"
DESCRIPTION = """\
Edit a fine-tuned checkpoint W1 towards its pretrained/zero-shot weights W0 without data:
each layer's update W1 - W0 is split by a thin SVD into its top-k part and the rest, which
are re-weighted from the spectrum (k from the effective rank by default, or an energy
threshold). Biases, LayerNorms, scalars, tensors missing in W0 and untouched tensors are
kept. q/k/v projections are edited as one stacked matrix by default (as the fused
reference implementation). SVD runs in float32 (or float64) on the GPU when present.
Writes a new run folder with the edited weights, monosoup_log.json (k, energy, lambdas per
tensor) and, with --eval (run folders), W1's and MonoSoup's metrics side by side.

W0/W1: .safetensors files or run folders; --w0 zero-shot rebuilds W0 (pretrained encoder
+ text-initialised head) from W1's run. --lora-scaling S: W1 holds LoRA pairs
(lora_A/lora_B); the dense update S * B A is formed on W0 and edited.

examples:
  longtail monosoup --w1 runs/full_ft --w0 zero-shot --eval --out runs/mono
  longtail monosoup --w1 ft.safetensors --w0 pretrained.safetensors --mode energy --energy 0.9
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--w1", required=True, help="fine-tuned checkpoint (.safetensors or run folder)")
    p.add_argument("--w0", required=True, help="pretrained checkpoint, or 'zero-shot' (rebuilt from W1's run)")
    p.add_argument("--mode", default="erank", help="rank rule: erank (default) or energy")
    p.add_argument("--energy", type=float, default=0.8, help="energy mode: fraction R (default 0.8)")
    p.add_argument("--qkv", default="stacked", choices=("stacked", "separate"), help="q/k/v handling")
    p.add_argument("--precision", default="float32", choices=("float32", "float64"), help="SVD precision")
    p.add_argument("--lora-scaling", type=float, help="W1 holds LoRA pairs: dense update = S * B @ A")
    p.add_argument("--eval", action="store_true", help="evaluate W1 and the edit on the run's test split")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--out", help="run folder to create (default runs/monosoup-TIMESTAMP)")


def run(args: argparse.Namespace) -> int:
    from longtail.runs import create_run
    from longtail.soups.formats import detect_format, open_format
    from longtail.soups.merge import load_state_dict, save_state_dict, weights_file
    from longtail.soups.monosoup import MonoSoupConfig, config_dict, lora_dense_state, monosoup
    from longtail.soups.soup_run import _row, _stats_of, format_table

    cfg = MonoSoupConfig(mode=args.mode, energy=args.energy, qkv=args.qkv, precision=args.precision,
                         device=args.device)
    w1_file = weights_file(args.w1)
    fmt = open_format(args.w1, None, args.device) if (args.eval or args.w0 == "zero-shot") else None
    w0 = fmt.zero_shot() if args.w0 == "zero-shot" else load_state_dict(args.w0)
    w1 = load_state_dict(w1_file)
    if args.lora_scaling is not None:
        w1 = lora_dense_state(w0, w1, args.lora_scaling)
    edited, log = monosoup(w0, w1, cfg)
    n_edit = sum(bool(e["edited"]) for e in log)
    config = {"label": "MonoSoup", "w0": args.w0, "w1": str(args.w1), **config_dict(cfg),
              "lora_scaling": args.lora_scaling}
    with create_run(args.out, "monosoup", config, device=args.device) as run:
        save_state_dict(edited, run.path(w1_file.name if detect_format(args.w1) else "model.safetensors"))
        if detect_format(args.w1):
            (fmt or open_format(args.w1, None, args.device)).publish(run.dir)
        run.write_json("monosoup_log.json", log)
        rows = []
        if args.eval:
            stats = _stats_of(args.w1)
            rows = [_row("W1 (fine-tuned)", fmt.metrics(w1), stats), _row("MonoSoup", fmt.metrics(edited), stats)]
            run.write_json("comparison.json", rows)
            print(format_table(rows))
        folder = run.finish({**rows[1], "comparison": rows} if rows else None)
    print(f"MonoSoup edited {n_edit} of {len(log)} tensors/groups; written to {folder}")
    return 0
