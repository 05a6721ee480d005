"""`longtail predict` against `longtail features`, and onnxruntime against torch, on real images.

Real data offline: the 100-class Tiny-ImageNet half (`../shared/data/tiny-imagenet-100a.zip`)
and the real ImageNet EfficientNet-Lite0 weights. A default probe (cosine + LA) is trained on
EfficientNet-Lite0 features of --per-class training images per class and saved as a run; then,
in the same process and on the same --n test images (the official validation photos):
- images/s of `longtail features`' extraction (`extract_features`, no cache) and of `longtail
  predict` with that probe run (`predict_to_file`: read check, extraction, probe, rows, CSV),
  alternating, --repeats times each (the ratio is the claim; the goal is predict >= 0.9x);
- the run exported to ONNX (`export_onnx`, fp32 and --quantize int8): onnxruntime images/s on
  the preprocessed batch against torch (backbone + probe head, same thread count), and the
  top-1 / balanced accuracy of torch, ONNX fp32 and ONNX int8 on all test images with the
  paired difference to torch (SE over images).

    python benchmarks/predict_speed.py [--root ZIP] [--n 1000] [--per-class 20] [--out FILE.json]
    python benchmarks/predict_speed.py --smoke    # tiny_clip on generated images, seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.conftest for --smoke
from probe_bench import save_results  # noqa: E402

from longtail.eval.tables import markdown_table
from longtail.methods.predictions import predict_to_file
from longtail.methods.predictor import Predictor
from longtail.models.backbone import load_backbone
from longtail.models.features import extract_features

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-imagenet-100a.zip"


def _data(args, workdir: Path):
    """(train subset, test set, backbone name, backbone options) for the run."""
    from longtail.data.open_images import open_images

    if args.smoke:
        from tests.conftest import write_random_images

        for split, n in (("train", 6), ("test", 5)):
            (workdir / "data" / split).mkdir(parents=True)
            write_random_images(workdir / "data" / split, {f"c{i}": n for i in range(4)}, (20, 30), seed=len(split))
        return (open_images(str(workdir / "data"), "train"), open_images(str(workdir / "data"), "test"),
                "tiny_clip", {})
    train = open_images(str(args.root), "train", progress=False)
    rng = np.random.default_rng(0)
    picks = np.concatenate([rng.choice(np.flatnonzero(train.labels == c), args.per_class, replace=False)
                            for c in range(train.num_classes)])
    test = open_images(str(args.root), "val", progress=False)
    return train.subset(np.sort(picks)), test, "efficientnet_lite0", {}


def _probe_run(train, test, backbone, options: dict, workdir: Path) -> Path:
    """A default probe run on the features of `train`, its test features from `test` (files as
    `longtail features` writes them, so the run records its backbone)."""
    from longtail.data.features import load_features, save_features
    from longtail.methods.probe import ProbeConfig, run_probe

    for name, data in (("train", train), ("test", test)):
        fs = extract_features(backbone, data, progress=False, meta={"backbone_options": options})
        save_features(fs, workdir / f"{name}.npz")
    folder, _ = run_probe(load_features(workdir / "train.npz"), load_features(workdir / "test.npz"), ProbeConfig(),
                          out=workdir / "probe", report=False)
    return folder


def _rate(fn, n: int) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean of a - b, its SE over images) for per-image 0/1 correctness."""
    d = a.astype(float) - b.astype(float)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(DEFAULT_ROOT))
    p.add_argument("--n", type=int, default=1000, help="test images timed by predict / features")
    p.add_argument("--per-class", type=int, default=20, help="training images per class for the probe")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--accuracy-per-class", type=int, default=0, help="test images per class for the ONNX "
                   "accuracy rows (0: all)")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "predict_speed.json"))
    args = p.parse_args(argv)
    if not args.smoke and not Path(args.root).is_file():
        print(f"skipped: {args.root} not found")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="predict_speed-"))
    os.environ.setdefault("LONGTAIL_CACHE", str(workdir / "cache"))
    train, test, name, options = _data(args, workdir)
    backbone = load_backbone(name, **options)
    run = _probe_run(train, test, backbone, options, workdir)
    predictor = Predictor.from_run(run, device="cpu")
    timed = test.subset(np.arange(min(args.n, len(test))))
    n = len(timed)

    rates: dict[str, list[float]] = {"features": [], "predict": []}
    for r in range(args.repeats):
        rates["features"].append(_rate(lambda: extract_features(backbone, timed, progress=False, cache=False), n))
        out = workdir / f"pred{r}.csv"
        rates["predict"].append(_rate(lambda out=out: predict_to_file(predictor, timed, out, progress=False), n))
    features_rate, predict_rate = max(rates["features"]), max(rates["predict"])

    rows = [{"what": "longtail features (extract, no cache)", "rate": features_rate, "ratio": 1.0},
            {"what": "longtail predict (probe run, CSV)", "rate": predict_rate, "ratio": predict_rate / features_rate}]
    accuracy: list[dict] = []
    try:
        import onnxruntime as ort

        from longtail.methods.finetune.onnx_export import export_onnx
    except ImportError:
        ort = None
    if ort is not None:
        from longtail.eval.metrics import balanced_accuracy
        from longtail.methods.finetune.augment import DecodedImages
        from longtail.methods.finetune.onnx_export import run_graph

        export = export_onnx(run, workdir / "onnx", quantize=True)
        graph = run_graph(run)[0].eval()
        transform = backbone.transform
        if args.accuracy_per_class:
            test = test.subset(np.concatenate([np.flatnonzero(test.labels == c)[:args.accuracy_per_class]
                                               for c in range(test.num_classes)]))
        loader = torch.utils.data.DataLoader(DecodedImages(test, transform), batch_size=64)
        sessions = {kind: ort.InferenceSession(str(export / f"model{suffix}.onnx"), providers=["CPUExecutionProvider"])
                    for kind, suffix in (("onnx fp32", ""), ("onnx int8", ".int8"))}
        logits: dict[str, list[np.ndarray]] = {"torch": [], **{k: [] for k in sessions}}
        seconds = dict.fromkeys(logits, 0.0)
        with torch.inference_mode():
            for pixels, _ in loader:
                x = transform.normalize(pixels)
                start = time.perf_counter()
                logits["torch"].append(graph(x).numpy())
                seconds["torch"] += time.perf_counter() - start
                for kind, session in sessions.items():
                    start = time.perf_counter()
                    logits[kind].append(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
                    seconds[kind] += time.perf_counter() - start
        labels = np.asarray(test.labels)
        correct = {k: np.concatenate(v).argmax(1) == labels for k, v in logits.items()}
        for kind in logits:
            rows.append({"what": f"{kind} forward (preprocessed batches of 64)", "rate": len(test) / seconds[kind],
                         "ratio": seconds["torch"] / seconds[kind]})
            diff, se = _paired(correct[kind], correct["torch"])
            accuracy.append({"model": kind, "top1": float(correct[kind].mean()),
                             "balanced": balanced_accuracy(np.concatenate(logits[kind]), labels, test.num_classes),
                             "diff": diff, "se": se,
                             "max_abs_logit_diff": float(np.abs(np.concatenate(logits[kind])
                                                                - np.concatenate(logits["torch"])).max())})
    table = markdown_table(rows, [("", "what", "s"), ("images/s", "rate", ".1f"), ("ratio", "ratio", ".2f")])
    if accuracy:
        table += "\n\n" + markdown_table(accuracy, [("model", "model", "s"), ("top-1 %", "top1", "pct"),
                                                    ("balanced %", "balanced", "pct"),
                                                    ("top-1 vs torch, points", "diff", "pct"),
                                                    ("± paired SE", "se", "pct"),
                                                    ("max |logit diff|", "max_abs_logit_diff", ".2e")])
    print(table)
    info = {"rows": rows, "accuracy": accuracy, "rates": rates, "n_timed": n, "n_test": len(test),
            "backbone": name, "smoke": args.smoke, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d")}
    if not args.smoke:
        save_results(args.out, info, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
