"""Diagnostic figure: 2-D PCA projection of real vs synthetic embeddings for a few classes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from longtail.errors import DataError  # noqa: E402
from longtail.eval.plots import DPI, save_png  # noqa: E402


def plot_latent_projection(
    real_X, real_y, synth_X, synth_y, classes: Sequence[int], path: str | Path,
    class_names: Sequence[str] | None = None, max_synthetic: int = 300,
) -> Path:
    """Scatter real (filled) and synthetic (hollow) rows of `classes` in the PCA plane of their
    real rows; at most `max_synthetic` synthetic points per class (evenly spaced). Writes `path`."""
    real_X, real_y = np.asarray(real_X, dtype=np.float64), np.asarray(real_y)
    synth_X, synth_y = np.asarray(synth_X, dtype=np.float64), np.asarray(synth_y)
    classes = [int(c) for c in classes]
    real_sel = np.isin(real_y, classes)
    if not real_sel.any():
        raise DataError(f"no real samples of classes {classes} to project")
    n_comp = min(2, int(real_sel.sum()), real_X.shape[1])
    pca = PCA(n_components=n_comp).fit(real_X[real_sel] if real_sel.sum() > 1 else real_X)
    fig, ax = plt.subplots(figsize=(5.6, 4.4), dpi=DPI)
    colors = plt.get_cmap("tab10")
    for i, c in enumerate(classes):
        label = class_names[c] if class_names is not None else f"class {c}"
        s = synth_X[synth_y == c]
        if len(s):
            s = s[np.linspace(0, len(s) - 1, min(len(s), max_synthetic)).astype(int)]
            ps = _pad(pca.transform(s))
            ax.scatter(ps[:, 0], ps[:, 1], s=14, facecolors="none", edgecolors=colors(i % 10),
                       alpha=0.6, label=f"{label} synthetic ({(synth_y == c).sum()})")
        pr = _pad(pca.transform(real_X[real_y == c]))
        ax.scatter(pr[:, 0], pr[:, 1], s=36, color=colors(i % 10), edgecolors="k",
                   label=f"{label} real ({(real_y == c).sum()})")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("Real vs synthetic embeddings (PCA of real rows)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    save_png(fig, path)
    plt.close(fig)
    return path


def _pad(points: np.ndarray) -> np.ndarray:
    """Two columns even when PCA had one component (a single-sample class)."""
    return points if points.shape[1] == 2 else np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
