"""`longtail predict`: label new images with any trained run (top-k, deployment prior, reject option)."""

from __future__ import annotations

import argparse

HELP = "label new images with a trained run: top-k labels and probabilities, prior, reject option"
DESCRIPTION = """\
Score a folder of new, unlabelled images (any layout, recursive), a zip, a .txt / .csv list of
paths, or one image with a run of any kind (probe, fit, soup, MonoSoup, LT-Soups soup/ or
final/) and write one row per image to --out: CSV (default), .jsonl or .parquet by extension,
columns path, label, score, status, label_1, prob_1, ... label_k, prob_k.

A probe run scores images through the backbone recorded in its training feature file (same
weights and preprocessing, else a one-line error); --features FILE scores precomputed features.
An unreadable file (corrupt, empty, not an image) gets its reason in `status` and the rest go
on. Images are scored in shards, so an interrupted run continues when started again with the
same arguments; --out is never overwritten.

--prior (docs/methods.md §13): the class prior of the deployment. Default: what the run was
trained for (balanced for logit-adjusted / balanced losses, the training frequencies for plain
CE). balanced | train | FILE (CSV class,weight) | estimate (EM on the images being predicted,
Saerens et al. 2002) | estimate=bbse (black-box shift estimation, needs the run's validation
split). The prior used is written to FILE.prior.csv.
--reject coverage=0.9 | risk=0.05: confidence thresholds chosen on the run's validation split
per shot group of the predicted class, so the tail is not rejected first; a rejected image gets
the label 'unknown' and the reason in `status`.

examples:
  longtail predict runs/fit-lift --data new_photos/ --out predictions.csv
  longtail predict runs/probe-la --data new_photos.zip --out preds.parquet --top-k 3 --prior estimate
  longtail predict runs/probe-la --features new.npz --out preds.jsonl --reject coverage=0.9
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder (probe, fit, soup, MonoSoup, LT-Soups soup/ or final/)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="images: folder, .zip, .txt / .csv list of paths, or one image")
    source.add_argument("--features", help="precomputed features (.npz / .safetensors) for a probe run")
    p.add_argument("--out", required=True, help="table to write: .csv, .jsonl or .parquet (never overwritten)")
    p.add_argument("--top-k", type=int, default=5, help="labels and probabilities per image (default 5)")
    p.add_argument("--prior", help="balanced | train | FILE.csv | estimate | estimate=bbse (default: as trained)")
    p.add_argument("--reject", help="coverage=F or risk=F, thresholds chosen on the run's validation split")
    p.add_argument("--logits", help="also keep the raw logits in this .npz")
    p.add_argument("--root", help="image root for a .txt / .csv list (default: the list's folder)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0, help="image decoding workers")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from longtail.data.open_features import open_features
    from longtail.data.unlabelled import open_unlabelled
    from longtail.methods.predictions import check_outputs, predict_to_file, prior_path
    from longtail.methods.predictor import Predictor

    check_outputs(args.out, args.logits)
    predictor = Predictor.from_run(args.run, device=args.device, batch_size=args.batch_size, workers=args.workers)
    source = open_features(args.features) if args.features else open_unlabelled(args.data, args.root, all_files=True)
    summary = predict_to_file(predictor, source, args.out, top_k=args.top_k, prior=args.prior, reject=args.reject,
                              logits_out=args.logits, progress=not args.no_progress)
    prior = summary["prior"]
    said = f"estimate ({prior['method']})" if "method" in prior else prior["prior"]
    said += " (as trained)" if prior.get("how") == "as trained" else ""
    line = (f"wrote {summary['out']}: {summary['images']} images, {summary['ok']} labelled, "
            f"{summary['unreadable']} unreadable, {summary['rejected']} rejected; prior: {said}")
    if args.prior:
        line += f" ({prior_path(Path(args.out))})"
    print(line)
    return 0
