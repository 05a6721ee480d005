"""Self-contained HTML reports: one per run, and a comparison across runs."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from longtail.eval import plots
from longtail.io import write_text
from longtail.runs import load_run

METRIC_COLUMNS = (
    ("all", "all"),
    ("class_mean", "class mean"),
    ("many", "many"),
    ("medium", "medium"),
    ("few", "few"),
    ("worst_class", "worst class"),
    ("hmean", "harmonic mean"),
    ("gmean", "geometric mean"),
    ("macro_f1", "macro-F1"),
    ("ece", "ECE"),
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}.na{color:#999}.ref{font-style:italic;background:#fafafa}
.figs{display:flex;flex-wrap:wrap;gap:1em}.figs img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:.9em}code{background:#f4f4f4;padding:0 .2em}
"""


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(src: str, alt: str) -> str:
    return f'<img src="{src}" alt="{html.escape(alt)}">'


def _fmt(value: Any, percent: bool = True) -> str:
    if value is None:
        return '<span class="na">n/a</span>'
    if isinstance(value, float):
        return f"{100 * value:.2f}" if percent else f"{value:.4g}"
    return html.escape(str(value))


def metrics_table(rows: Sequence[tuple[str, dict[str, Any]]], extra: Sequence[str] = (), ref_rows: Sequence[str] = ()) -> str:
    """An HTML table: one row per (name, metrics); accuracies and ECE in %."""
    head = "".join(f"<th>{label}</th>" for _, label in METRIC_COLUMNS)
    head += "".join(f"<th>{html.escape(e)}</th>" for e in extra)
    body = []
    for name, m in rows:
        cls = ' class="ref"' if name in ref_rows else ""
        cells = "".join(f"<td>{_fmt(m.get(k))}</td>" for k, _ in METRIC_COLUMNS)
        cells += "".join(f"<td>{_fmt(m.get(e), percent=False)}</td>" for e in extra)
        body.append(f"<tr{cls}><td>{html.escape(name)}</td>{cells}</tr>")
    return f"<table><tr><th>run</th>{head}</tr>{''.join(body)}</table>"


def _stats_html(stats: dict[str, Any] | None) -> str:
    if not stats:
        return '<p class="note">No data statistics recorded.</p>'
    sizes = stats.get("group_sizes", {})
    rows = [
        ("classes", stats.get("num_classes")),
        ("training samples", stats.get("total")),
        ("largest / smallest class", f"{stats.get('n_max')} / {stats.get('n_min')}"),
        ("imbalance ratio", f"{stats['imbalance_ratio']:.2f}" if stats.get("imbalance_ratio") else "inf"),
        ("head-tail ratio", f"{stats['head_tail_ratio']:.3f}" if stats.get("head_tail_ratio") is not None else "inf (no tail)"),
        ("many / medium / few classes", f"{sizes.get('many', 0)} / {sizes.get('medium', 0)} / {sizes.get('few', 0)}"),
    ]
    body = "".join(f"<tr><td>{k}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _config_html(config: dict[str, Any]) -> str:
    body = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in config.items()
    )
    return f"<table>{body}</table>"


def _page(title: str, sections: Sequence[str]) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n"
    )


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write RUN/report.html (or `out`): metrics, data statistics, plots, config, environment."""
    run = load_run(run_dir)
    folder: Path = run["folder"]
    m = run["metrics"]
    name = folder.name
    sections = [f'<p class="note">Run folder <code>{html.escape(str(folder))}</code>; kind '
                f"<code>{html.escape(str(run['config'].get('kind')))}</code>.</p>"]
    if m:
        sections.append("<h2>Metrics (accuracy and ECE in %)</h2>" + metrics_table([(name, m)]))
        figs = []  # runs that saved per-class results / a reliability histogram get their plots
        if m.get("per_class"):
            figs += [_img(_png(plots.per_class_accuracy(m)), "per-class accuracy"),
                     _img(_png(plots.group_bars([(name, m)])), "group accuracy")]
        if m.get("reliability"):
            figs.append(_img(_png(plots.reliability(m)), "reliability diagram"))
        if figs:
            sections.append("<h2>Head vs tail</h2><div class='figs'>" + "".join(figs) + "</div>")
    else:
        sections.append('<p class="note">This run has no metrics.json yet.</p>')
    stats = run["data_stats"]
    sections.append("<h2>Training data</h2>" + _stats_html(stats))
    if stats and stats.get("counts"):
        sections.append("<div class='figs'>" + _img(_png(plots.class_counts(stats["counts"], stats.get("groups"))), "class counts") + "</div>")
    extra = sorted((folder / "figures").glob("*.png")) if (folder / "figures").is_dir() else []
    if extra:
        imgs = "".join(_img("data:image/png;base64," + base64.b64encode(p.read_bytes()).decode(), p.stem) for p in extra)
        sections.append("<h2>Diagnostics</h2><div class='figs'>" + imgs + "</div>")
    sections.append("<h2>Configuration</h2>" + _config_html(run["config"]))
    env = run["env"] or {}
    if env:
        pk = env.get("packages", {})
        env_rows = {k: v for k, v in env.items() if k != "packages"} | {f"pkg {k}": v for k, v in pk.items()}
        sections.append("<h2>Environment</h2>" + _config_html(env_rows))
    path = Path(out) if out else folder / "report.html"
    return write_text(path, _page(f"longtail run: {name}", sections))


def write_comparison_report(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    title: str = "longtail comparison",
    references: Sequence[tuple[str, dict[str, Any]]] = (),
    note: str = "",
) -> Path:
    """Compare several runs side by side; `references` are extra rows (e.g. a Bayes limit)."""
    rows: list[tuple[str, dict[str, Any]]] = []
    for d in run_dirs:
        run = load_run(d)
        if not run["metrics"]:
            continue
        label = run["config"].get("label") or Path(run["folder"]).name
        rows.append((label, run["metrics"]))
    sections = [f'<p class="note">{html.escape(note)}</p>'] if note else []
    table_rows = list(references) + rows
    sections.append("<h2>Metrics (accuracy and ECE in %)</h2>"
                    + metrics_table(table_rows, extra=("fit_seconds",), ref_rows=[r[0] for r in references]))
    detailed = [(label, m) for label, m in rows if m.get("per_class")]
    if detailed:
        figs = [_img(_png(plots.group_bars(detailed)), "group accuracy by run"),
                _img(_png(plots.per_class_comparison(detailed)), "per-class accuracy by run")]
        sections.append("<h2>Head vs tail</h2><div class='figs'>" + "".join(figs) + "</div>")
    here = Path(out).resolve().parent  # links relative to the page, so the folder can move
    links = "".join(
        f"<li><a href='{html.escape(os.path.relpath(Path(d).resolve() / 'report.html', here))}'>"
        f"{html.escape(str(d))}</a></li>" for d in run_dirs
    )
    sections.append(f"<h2>Runs</h2><ul>{links}</ul>")
    return write_text(out, _page(title, sections))
