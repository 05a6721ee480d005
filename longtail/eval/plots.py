"""Matplotlib figures for run reports: per-class accuracy vs training count, group bars,
reliability diagram, the confusion matrix of small label sets, and multi-run comparisons; and
`longtail stats`'s sorted class-count plot (`save_count_plot`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from longtail.eval.metrics import SHOT_GROUPS  # noqa: E402

if TYPE_CHECKING:
    from longtail.data.stats import ClassStats

DPI = 110  # report figures are built and saved at this resolution (one text layout serves both)
GROUP_COLORS = {"many": "#1f77b4", "medium": "#ff7f0e", "few": "#d62728"}
GROUPS = ("many", "medium", "few")


def save_png(fig: plt.Figure, target) -> None:
    """Write `fig` as PNG at its own dpi to `target`: a binary file, or a path (written
    atomically, its folder made). Every figure here is laid out by tight_layout when built, so
    its layout engine (a placeholder that tight_layout leaves) is dropped first: with one set,
    matplotlib draws the whole figure an extra time before saving (a fifth of a report's
    time); the pixels are the same. The caller closes the figure."""
    fig.set_layout_engine(None)
    if not isinstance(target, (str, os.PathLike)):
        fig.savefig(target, format="png", dpi="figure")
        return
    from longtail.io import atomic_write  # makes the folder too

    atomic_write(target, lambda tmp: fig.savefig(tmp, format="png", dpi="figure"))


def plain_log_ticks(axis, values: np.ndarray) -> None:
    """Log-axis tick labels as plain numbers (16, not 1.6x10^1); minor ticks labelled too when
    the values span less than a decade, so a small range still has readable ticks."""
    values = np.asarray(values, dtype=float)
    values = values[values > 0]
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")
    axis.set_major_formatter(plain)
    small = values.size and values.max() / values.min() < 10
    axis.set_minor_formatter(plain if small else matplotlib.ticker.NullFormatter())


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average that shrinks its window at the ends (no zero-padding dip)."""
    kernel = np.ones(window)
    return np.convolve(values, kernel, mode="same") / np.convolve(np.ones_like(values), kernel, mode="same")


def _per_class_arrays(metrics: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = [r for r in metrics["per_class"] if r.get("accuracy") is not None]
    counts = np.array([r["train_count"] for r in rows], dtype=float)
    acc = np.array([r["accuracy"] for r in rows], dtype=float)
    groups = np.array([r["group"] for r in rows])
    return counts, acc, groups


def per_class_accuracy(metrics: dict[str, Any], title: str = "") -> plt.Figure:
    """Scatter of each class's test accuracy against its training count (log x), by group."""
    counts, acc, groups = _per_class_arrays(metrics)
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=DPI)
    for g in GROUPS:
        sel = groups == g
        if sel.any():
            ax.scatter(counts[sel], 100 * acc[sel], s=18, alpha=0.8, label=g, color=GROUP_COLORS[g])
    if counts.size > 2 and np.ptp(np.log(counts)) > 0:
        order = np.argsort(counts)
        window = max(3, counts.size // 10)
        ax.plot(counts[order], 100 * moving_average(acc[order], window), "k-", lw=1.5,
                label=f"moving mean ({window} classes)")
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis, counts)
    ax.set_xlabel("training images of the class (log)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(title or "Per-class accuracy vs training count")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def group_bars(runs: Sequence[tuple[str, dict[str, Any]]]) -> plt.Figure:
    """Grouped bars of all / many / medium / few accuracy for one or several runs."""
    keys = SHOT_GROUPS
    labels = tuple(k.replace("_", " ") for k in keys)
    n = max(1, len(runs))
    fig, ax = plt.subplots(figsize=(min(12.0, 5.0 + 0.6 * n), 4.2 + 0.22 * (n // 2 if n > 1 else 0)), dpi=DPI)
    width = 0.84 / n
    x = np.arange(len(keys))
    colors = _colors(n)
    for i, (name, m) in enumerate(runs):
        vals = [m.get(k) for k in keys]
        heights = [100 * v if v is not None else 0.0 for v in vals]
        bars = ax.bar(x + i * width - 0.42 + width / 2, heights, width, label=name, color=colors[i])
        if n <= 4:
            for bar, v in zip(bars, vals):
                text = "n/a" if v is None else f"{100 * v:.1f}"
                ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, labels)
    ax.set_xlabel("test classes (shot group by training count)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Accuracy by shot group (empty groups: n/a)")
    if n > 1:
        ax.legend(fontsize=7, ncol=_legend_columns(runs), loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def reliability(metrics: dict[str, Any], title: str = "") -> plt.Figure:
    """Reliability diagram: accuracy vs confidence per bin, with the bin's sample share."""
    rel = metrics["reliability"]
    conf = np.array([np.nan if c is None else c for c in rel["confidence"]], dtype=float)
    acc = np.array([np.nan if a is None else a for a in rel["accuracy"]], dtype=float)
    count = np.array(rel["count"], dtype=float)
    m = count.size
    edges = np.linspace(0, 1, m + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(4.8, 5.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]},
                                  dpi=DPI)
    ok = count > 0
    ax.bar(centers[ok], acc[ok], width=1 / m, edgecolor="k", color="#1f77b4", alpha=0.8, label="accuracy")
    ax.plot(conf[ok], conf[ok], "o", color="#d62728", ms=4, label="mean confidence")
    ax.vlines(centers[ok], np.minimum(acc[ok], conf[ok]), np.maximum(acc[ok], conf[ok]),
              color="#d62728", lw=1.2, alpha=0.7)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_ylabel("accuracy")
    ece = metrics.get("ece")
    ax.set_title(title or f"Reliability (ECE {100 * ece:.2f}%, {m} bins)" if ece is not None else "Reliability")
    ax.legend(fontsize=8, loc="upper left")
    ax2.bar(centers, count / max(count.sum(), 1), width=1 / m, color="gray")
    ax2.set_xlabel("confidence")
    ax2.set_ylabel("share")
    fig.tight_layout()
    return fig


def _count_staircases(ax, counts: np.ndarray, groups: np.ndarray | None) -> None:
    """Counts sorted large -> small as one filled staircase per run of same-group ranks, labelled
    'group (n)': as fast at 8,142 classes as at 10 (one bar per class took ~15 s to draw there);
    runs, since group_counts may interleave the groups along the count order."""
    order = np.argsort(-counts, kind="stable")
    sorted_counts = np.maximum(counts[order], 0.8)
    sorted_groups = np.asarray(groups)[order] if groups is not None else np.full(counts.size, "all")
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    labelled: set[str] = set()
    for start, stop in zip(starts, np.r_[starts[1:], counts.size]):
        group = str(sorted_groups[start])
        label = None if group in labelled or groups is None else f"{group} ({int((sorted_groups == group).sum())})"
        labelled.add(group)
        ax.stairs(sorted_counts[start:stop], np.arange(start, stop + 1), baseline=0.8, fill=True,
                  color=GROUP_COLORS.get(group, "gray"), label=label)


def class_counts(counts: Sequence[int], groups: Sequence[str] | None = None, title: str = "") -> plt.Figure:
    """Training images per class, sorted descending (log y), coloured by shot group."""
    counts = np.asarray(counts)
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=DPI)
    _count_staircases(ax, counts, None if groups is None else np.asarray(groups))
    ax.set_yscale("log")
    plain_log_ticks(ax.yaxis, counts)
    ax.set_xlabel("classes, sorted by training count")
    ax.set_ylabel("training images (log)")
    ax.set_title(title or "Training distribution")
    fig.tight_layout()
    return fig


def save_count_plot(stats: ClassStats, path: Path, title: str, split: str = "train") -> Path:
    """`longtail stats`'s plot, saved as PNG at `path`: the class counts of a `ClassStats` sorted
    large -> small (log y), coloured by shot group, many / few thresholds as lines."""
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    _count_staircases(ax, np.asarray(stats.counts), np.asarray(stats.groups))
    ax.axhline(stats.many_threshold + 0.5, color="k", ls="--", lw=0.8,
               label=f"many: > {stats.many_threshold}")
    ax.axhline(stats.few_threshold - 0.5, color="k", ls=":", lw=0.8,
               label=f"few: < {stats.few_threshold}")
    ax.set_yscale("log")
    ax.set_xlabel("class rank (largest first)")
    ax.set_ylabel("training images" if split == "train" else f"{split} images")
    ax.set_title(f"{title}: IR {stats.imbalance_ratio:.1f}, head-tail ratio {stats.head_tail_ratio:.2f}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)
    return path


def per_class_comparison(runs: Sequence[tuple[str, dict[str, Any]]]) -> plt.Figure:
    """Per-class accuracy of several runs, classes sorted by training count (head left)."""
    fig, ax = plt.subplots(figsize=(7.6, 4.2 + 0.2 * (len(runs) // 2)), dpi=DPI)
    colors = _colors(len(runs))
    for i, (name, m) in enumerate(runs):
        counts, acc, _ = _per_class_arrays(m)
        order = np.argsort(-counts, kind="stable")
        smooth = moving_average(acc[order], max(1, counts.size // 15))
        ax.plot(np.arange(counts.size), 100 * smooth, lw=1.5, label=name, color=colors[i],
                ls="-" if i < 10 else "--")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("classes, sorted by training count (head → tail)")
    ax.set_ylabel("test accuracy (%, smoothed)")
    ax.set_title("Per-class accuracy across runs")
    ax.legend(fontsize=7, ncol=_legend_columns(runs), loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def confusion_matrix(metrics: dict[str, Any]) -> plt.Figure:
    """The row-normalised confusion matrix (metrics["confusion"], C <= 100 classes), classes
    ordered by training count (head top-left, tail bottom-right) with the shot-group boundaries
    drawn; a cell is the share of the true class's test images predicted as that class."""
    counts = np.asarray(metrics["confusion"], dtype=float)
    rows = metrics["per_class"]
    order = np.argsort([-r["train_count"] for r in rows], kind="stable")
    counts = counts[np.ix_(order, order)]
    shares = np.divide(counts, counts.sum(axis=1, keepdims=True), out=np.zeros_like(counts),
                       where=counts.sum(axis=1, keepdims=True) > 0)
    c = counts.shape[0]
    side = min(7.5, 3.2 + 0.09 * c)
    fig, ax = plt.subplots(figsize=(side + 1.0, side), dpi=DPI)
    image = ax.imshow(100 * shares, cmap="viridis", vmin=0, vmax=100, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the true class's test images")
    groups = [rows[i]["group"] for i in order]
    for k in range(1, c):
        if groups[k] != groups[k - 1]:
            ax.axhline(k - 0.5, color="w", lw=0.8)
            ax.axvline(k - 0.5, color="w", lw=0.8)
    if c <= 30:
        names = [str(rows[i]["name"])[:18] for i in order]
        ax.set_xticks(range(c), names, rotation=90, fontsize=7)
        ax.set_yticks(range(c), names, fontsize=7)
    ax.set_xlabel("predicted class (head → tail)")
    ax.set_ylabel("true class (head → tail)")
    ax.set_title("Confusion matrix, rows normalised")
    fig.tight_layout()
    return fig


def has_curves(metrics: dict[str, Any]) -> bool:
    """Whether a run recorded per-epoch training history or a validation selection log."""
    return bool(metrics.get("history") or metrics.get("selection"))


def training_curves(runs: Sequence[tuple[str, dict[str, Any]]]) -> plt.Figure:
    """Training loss and accuracy per epoch (metrics["history"]) and, where a run selected its
    weights on held-out images, the validation class-mean accuracy per evaluation step
    (metrics["selection"]); one line per run."""
    with_selection = any(m.get("selection") for _, m in runs)
    panels = 3 if with_selection else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6), dpi=DPI)
    colors = _colors(len(runs))
    for i, (name, m) in enumerate(runs):
        history = m.get("history") or []
        epochs = [h.get("epoch", j + 1) for j, h in enumerate(history)]
        style = {"color": colors[i], "marker": "o", "ms": 3, "lw": 1.5, "label": name}
        if history:
            axes[0].plot(epochs, [h.get("loss") for h in history], **style)
            axes[1].plot(epochs, [100 * h["train_acc"] if h.get("train_acc") is not None else None
                                  for h in history], **style)
        selection = m.get("selection") or []
        if with_selection and selection:
            axes[2].plot([r.get("step") for r in selection],
                         [100 * r["val_class_mean"] if r.get("val_class_mean") is not None else None
                          for r in selection], **style)
    titles = ("Training loss per epoch", "Training accuracy per epoch", "Validation class-mean accuracy")
    xlabels = ("epoch", "epoch", "optimizer step")
    ylabels = ("mean training loss", "training accuracy (%)", "validation class-mean accuracy (%)")
    for ax, title, xlabel, ylabel in zip(axes, titles, xlabels, ylabels):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if len(handles) > 1:  # one legend under the panels
        ncol = min(len(handles), 3 if _legend_columns(runs) == 2 else 1)
        rows = -(-len(handles) // ncol)
        fig.set_figheight(3.6 + 0.2 * rows)
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=ncol, fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, min(0.5, (0.2 * rows + 0.1) / (3.6 + 0.2 * rows)), 1, 1))
    else:
        fig.tight_layout()
    return fig


def _legend_columns(runs: Sequence[tuple[str, Any]]) -> int:
    """Two legend columns for short run labels, one for long ones (so the legend fits the figure)."""
    return 2 if max((len(name) for name, _ in runs), default=0) <= 40 else 1


def _colors(n: int) -> list:
    """n distinguishable colours (tab10, then tab20)."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def risk_coverage_curves(curves: dict[str, dict[str, Any]], path: str | None = None, title: str = "") -> plt.Figure:
    """Selective risk (error among accepted) against coverage for one or more named curves
    (dicts with "coverage", "risk" and optionally "aurc", as `eval.selective` writes them);
    saved as a PNG when `path` is given (docs/methods.md §13.7)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.8), dpi=DPI)
    colors = _colors(len(curves))
    for i, (name, curve) in enumerate(curves.items()):
        label = name if curve.get("aurc") is None else f"{name} (AURC {100 * curve['aurc']:.2f}%)"
        ax.step(100 * np.asarray(curve["coverage"], dtype=float), 100 * np.asarray(curve["risk"], dtype=float),
                where="post", lw=1.5, color=colors[i], label=label)
    ax.set_xlim(0, 100)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("coverage (% of inputs accepted)")
    ax.set_ylabel("risk (% error among accepted)")
    ax.set_title(title or "Risk–coverage")
    if curves:
        ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        save_png(fig, path)
    return fig
