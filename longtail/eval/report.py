"""Self-contained HTML reports: one per run, and a comparison across runs.

Each page says what was measured on which data: the test data (file or dataset, split, size,
classes), metrics, head-vs-tail plots, a per-class table with class names, training curves of
fine-tuned runs, the training data, config and environment. A comparison labels each run by what
differs from the others (`eval.compare.run_labels`) and warns, at the top of the page, when the
runs' data differ (`eval.compare.dataset_warnings`); asked to (`test_logits`), it adds each run's
paired difference from the first on the same test images (`eval.paired`). Links are relative to
the page.
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from longtail.errors import LongtailError
from longtail.eval import plots
from longtail.eval.compare import dataset_warnings, run_labels
from longtail.eval.failures import TestImage, confused_pairs_html, gallery_html, story_html
from longtail.eval.paired import N_BOOT, compare_runs, paired_rows
from longtail.eval.tables import (
    METRIC_COLUMNS,
    SORT_SCRIPT,
    describe_test_data,
    dotted,
    esc,
    key_values,
    metrics_table,
    per_class_comparison_html,
    per_class_html,
    relative_link,
    stats_table,
    test_data_html,
    with_class_scores,
)
from longtail.io import write_text
from longtail.runs import load_run

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}.na{color:#999}.ref{font-style:italic;background:#fafafa}
.figs{display:flex;flex-wrap:wrap;gap:1em}.figs img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:.9em}code{background:#f4f4f4;padding:0 .2em}
.warn{border:2px solid #d62728;background:#fff3f3;padding:.5em 1em;margin:1em 0}.warn h2{margin-top:0;border:0;color:#b00}
details summary{cursor:pointer;margin:.4em 0;color:#444}
table.kv td,table.data td:nth-child(4){text-align:left}table.classes td:nth-child(2){text-align:left}
table.pairs td:nth-child(1),table.pairs td:nth-child(4){text-align:left}th[data-order=asc]:after{content:" ▲"}th[data-order=desc]:after{content:" ▼"}
.story{border:1px solid #bbb;background:#f8fbff;padding:.2em 1em .6em;margin:1em 0}.story h2{margin-top:.6em}
.gallery{display:flex;flex-wrap:wrap;gap:.6em}.gallery figure{margin:0;width:110px;font-size:.75em;text-align:center}
.gallery img{width:96px;height:auto;border:1px solid #ccc;image-rendering:pixelated}
"""


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    plots.save_png(fig, buf)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(src: str, alt: str) -> str:
    return f'<img src="{src}" alt="{esc(alt)}" title="{esc(alt)}">'


def _figures(heading: str, figs: Sequence[str]) -> list[str]:
    return [f"<h2>{heading}</h2><div class='figs'>{''.join(figs)}</div>"] if figs else []


def _warnings_html(lines: Sequence[str]) -> str:
    items = "".join(f"<li>{esc(line)}</li>" for line in lines)
    return (f"<div class='warn'><h2>Warning: these runs used different data</h2><ul>{items}</ul>"
            "<p>Their numbers are not directly comparable.</p></div>")


def _page(title: str, sections: Sequence[str]) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>{''.join(sections)}"
        f"<script>{SORT_SCRIPT}</script></body></html>\n"
    )


def _origin_links(run: dict[str, Any], page: Path) -> str:
    """Links to the runs a soup / MonoSoup was made of, where they are run folders."""
    config = run["config"]
    sources = [("ingredient", p) for p in config.get("ingredients") or []]
    sources += [(key, config[key]) for key in ("w1", "w0", "base", "init_from") if isinstance(config.get(key), str)]
    items = [f"<li>{esc(role)}: {relative_link(Path(p) / 'report.html', page, str(p))}</li>"
             for role, p in sources if (Path(p) / "config.yaml").is_file()]
    return f"<h2>Made from</h2><ul>{''.join(items)}</ul>" if items else ""


def _short(cell: str) -> str:
    """A CSV cell for a page: numbers to 4 significant digits, anything else as it is."""
    try:
        return f"{float(cell):.4g}"
    except ValueError:
        return cell


def _selection_html(m: dict[str, Any], folder: Path, top: int = 10) -> str:
    """A method=auto run's choice, how it was validated, its cost and the best rows of its table."""
    auto = m.get("auto")
    if not auto:
        return ""
    chosen = auto.get("chosen") or {}
    settings = " ".join(f"{k}={v}" for k, v in (chosen.get("settings") or {}).items() if v not in (None, {}))
    cost, work, total = auto.get("cost_vs_plain_fit"), auto.get("work_vs_plain_fit"), auto.get("total_seconds") or 0
    text = (f"<p>Chosen by {esc(auto.get('metric'))} on {esc(auto.get('validated_by'))}; the test data was "
            f"not used: <code>{esc(settings)}</code> (score {100 * (chosen.get('score') or 0):.1f} %). "
            f"{esc(auto.get('num_candidates'))} candidate rows, search and refit {total:.1f} s"
            + (f", {cost:.1f}x the seconds and {work or 0:.1f}x the work of one plain fit "
               f"({esc(auto.get('plain_fit_from'))})" if cost else "") + ".</p>")
    path = folder / str(auto.get("table") or "selection.csv")
    if not path.is_file():
        return "<h2>Selection</h2>" + text
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[: top + 1]
    head = "".join(f"<th>{esc(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(_short(c))}</td>" for c in row) + "</tr>" for row in rows[1:])
    return (f"<h2>Selection</h2>{text}<p class='note'>The best {len(rows) - 1} rows of "
            f"<code>{esc(path.name)}</code> (scores are balanced accuracies, 0 to 1):</p>"
            f"<table>{'<tr>' + head + '</tr>'}{body}</table>")


def _abstaining_html(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """The risk-coverage curves (abstaining on the least confident images first) with their AURC,
    and each run's operating point where it was evaluated with a reject rule (docs/methods.md §13)."""
    curves = {label: {**m["selective"]["curve"], "aurc": m["selective"].get("aurc")}
              for label, m in rows if (m.get("selective") or {}).get("curve")}
    if not curves:
        return ""
    points = []
    for label, m in rows:
        sel = m.get("selective") or {}
        if sel.get("coverage") is None:
            continue
        per_group = ", ".join(f"{g} {'n/a' if r is None else f'{100 * r:.1f} %'}"
                              for g, r in (sel.get("rejection_rate_per_group") or {}).items())
        risk = "n/a" if sel.get("risk") is None else f"{100 * sel['risk']:.2f} %"
        points.append(f"<li>{esc(label)}: {esc(sel.get('rule') or 'reject rule')}: coverage {100 * sel['coverage']:.1f} %, "
                      f"error of accepted {risk} (all: {100 * sel['error_all']:.2f} %); rejected per shot group: "
                      f"{esc(per_group)}</li>")
    note = ("<p class='note'>Error among the accepted images when the least confident (max softmax) are "
            "abstained on; lower is better, AURC is the area under the curve.</p>")
    listed = f"<ul>{''.join(points)}</ul>" if points else ""
    return (f"<h2>Abstaining</h2>{note}{listed}<div class='figs'>"
            + _img(_png(plots.risk_coverage_curves(curves)), "risk-coverage") + "</div>")


def write_report(run_dir: str | Path, out: str | Path | None = None,
                 test_image: TestImage | str | None = None) -> Path:
    """Write RUN/report.html (or `out`): the shot-group story at the top, test data, metrics,
    plots, the confusion matrix (<= 100 classes) and most-confused pairs, a sortable per-class
    table with precision / recall / F1, the error gallery of the tail, training curves, training
    data, config, environment. Works for every run kind; parts a run did not record are left out.
    `test_image` (a test-set index -> PIL image, from the app layer) draws the gallery's pictures;
    a string says why there are none."""
    run = load_run(run_dir)
    folder: Path = run["folder"]
    page = Path(out) if out else folder / "report.html"
    m = run["metrics"] or {}
    config = run["config"]
    name = folder.name
    status = (run.get("status") or {}).get("status")
    sections = [f'<p class="note">Run folder <code>{esc(folder)}</code>; kind <code>{esc(config.get("kind"))}</code>'
                + (f"; label <code>{esc(config['label'])}</code>" if config.get("label") else "")
                + (f"; status <code>{esc(status)}</code>" if status and status != "finished" else "") + ".</p>"]
    sections.append(story_html(m))
    sections.append("<h2>Test data</h2>" + test_data_html(run))
    if m and any(m.get(k) is not None for k, _ in METRIC_COLUMNS):
        sections.append("<h2>Metrics (accuracy and ECE in %)</h2>" + metrics_table([(name, m)]))
        figs = []
        if m.get("per_class"):
            figs += [_img(_png(plots.per_class_accuracy(m)), "per-class accuracy"),
                     _img(_png(plots.group_bars([(name, m)])), "group accuracy")]
        if m.get("reliability"):
            figs.append(_img(_png(plots.reliability(m)), "reliability diagram"))
        sections += _figures("Head vs tail", figs)
        if m.get("confusion") and m.get("per_class"):
            sections += _figures("Confusion matrix", [_img(_png(plots.confusion_matrix(m)), "confusion matrix")])
        sections.append(confused_pairs_html(m))
        sections.append(_abstaining_html([(name, m)]))
        if m.get("per_class"):
            sections.append("<h2>Per-class results</h2><p class='note'>Click a column header to sort.</p>"
                            + per_class_html(with_class_scores(m)))
        sections.append(gallery_html(m, test_image))
    else:
        sections.append('<p class="note">This run has no test metrics (it was not evaluated, or has not finished).</p>')
    if plots.has_curves(m):
        sections += _figures("Training curves", [_img(_png(plots.training_curves([(name, m)])), "training curves")])
    sections.append(_selection_html(m, folder))
    sections.append(_origin_links(run, page))
    stats = run["data_stats"]
    sections.append("<h2>Training data</h2>" + stats_table(stats))
    if stats and stats.get("counts"):
        sections.append("<div class='figs'>" + _img(_png(plots.class_counts(stats["counts"], stats.get("groups"))), "class counts") + "</div>")
    extra = sorted((folder / "figures").glob("*.png")) if (folder / "figures").is_dir() else []
    sections += _figures("Diagnostics", [_img("data:image/png;base64," + base64.b64encode(p.read_bytes()).decode(), p.stem)
                                         for p in extra])
    sections.append("<h2>Configuration</h2>" + key_values(dotted(config)))
    env = run["env"] or {}
    if env:
        pk = env.get("packages", {})
        env_rows = {k: v for k, v in env.items() if k != "packages"} | {f"pkg {k}": v for k, v in pk.items()}
        sections.append("<h2>Environment</h2>" + key_values(env_rows))
    return write_text(page, _page(f"longtail run: {name}", sections))


def _load_all(run_dirs: Sequence[str | Path]) -> tuple[list[dict[str, Any]], list[str]]:
    runs = [load_run(d) for d in run_dirs]
    return runs, run_labels(runs)


def comparison_warnings(run_dirs: Sequence[str | Path]) -> list[str]:
    """What `write_comparison_report` warns about: the ways the runs' data differ."""
    runs, labels = _load_all(run_dirs)
    return dataset_warnings(runs, labels)


def _data_table(runs: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    """One row per run: classes, training images, test data and its size."""
    body = []
    for run, label in zip(runs, labels):
        stats, metrics = run.get("data_stats") or {}, run.get("metrics") or {}
        described = dict(describe_test_data(run))
        test = described.get("test features") or " / ".join(
            v for k, v in described.items() if k in ("dataset", "split", "evaluated as"))
        body.append(f"<tr><td>{esc(label)}</td><td>{esc(stats.get('num_classes') or metrics.get('num_classes') or '')}</td>"
                    f"<td>{esc(stats.get('total') or '')}</td><td>{esc(test)}</td>"
                    f"<td>{esc(metrics.get('num_test') or '')}</td></tr>")
    return ("<table class='data'><tr><th>run</th><th>classes</th><th>training images</th><th>test data</th>"
            f"<th>test images</th></tr>{''.join(body)}</table>")


TestLogits = Callable[[Path], tuple[Any, Any]]  # a run folder -> (logits, labels) of its own test set


def _paired_table(result: dict[str, Any]) -> str:
    """One `eval.paired.paired_difference` as a table (points)."""
    def pct(x: float | None, sign: bool = False) -> str:
        return "<span class='na'>n/a</span>" if x is None else f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"

    level = round(100 * result["level"])
    head = ("<tr><th>metric</th><th>first</th><th>this run</th><th>difference</th><th>paired SE</th>"
            f"<th>between-class SE</th><th>{level} % CI (bootstrap)</th><th>verdict</th></tr>")
    body = []
    for name, e in paired_rows(result):
        if e is None:
            body.append(f"<tr><td>{esc(name)}</td>" + "<td><span class='na'>n/a</span></td>" * 7 + "</tr>")
            continue
        body.append(f"<tr><td>{esc(name)}</td><td>{pct(e['a'])}</td><td>{pct(e['b'])}</td><td>{pct(e['diff'], True)}</td>"
                    f"<td>{pct(e['se'])}</td><td>{pct(e['se_between_classes'])}</td>"
                    f"<td>[{pct(e['ci'][0], True)}, {pct(e['ci'][1], True)}]</td><td>{esc(e['verdict'])}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _paired_html(runs: Sequence[dict[str, Any]], labels: Sequence[str], test_logits: TestLogits,
                 n_boot: int, seed: int) -> str:
    """Each run minus the first on the same test images (docs/methods.md §7.7), or why it cannot be
    paired; the first run's logits are computed once."""
    cache: dict[Path, tuple[Any, Any]] = {}

    def logits(folder: Path) -> tuple[Any, Any]:
        if folder not in cache:
            cache[folder] = test_logits(folder)
        return cache[folder]

    parts = []
    for run, label in zip(runs[1:], labels[1:]):
        try:
            result = compare_runs(runs[0], run, logits, n_boot=n_boot, seed=seed)
        except LongtailError as error:
            parts.append(f"<h3>{esc(label)}</h3><p class='note'>Not paired: {esc(str(error))}</p>")
            continue
        parts.append(f"<h3>{esc(label)}</h3><p class='note'>On the same {result['num_test']:,} test images "
                     f"({result['num_classes_evaluated']} classes); the predictions agree on "
                     f"{100 * result['agreement']:.1f} % of them.</p>" + _paired_table(result))
    note = (f"<p class='note'>Each run minus <b>{esc(labels[0])}</b>, in points, scored image by image on the "
            "same test images. Paired SE: over images within classes (the classes fixed); between-class SE: "
            "the classes as a sample of classes (what another long tail of the same kind would vary by); "
            f"interval: bootstrap of the images within each class ({n_boot} draws, seed {seed}). Verdict: better "
            "or worse when the difference exceeds 2 paired SE, else equal within noise.</p>")
    return "<h2>Paired differences</h2>" + note + "".join(parts)


def write_comparison_report(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    title: str = "longtail comparison",
    references: Sequence[tuple[str, dict[str, Any]]] = (),
    note: str = "",
    test_logits: TestLogits | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Path:
    """Compare several runs side by side; `references` are extra rows (e.g. a Bayes limit).
    Runs are labelled by their `--label` or by what differs between their configs; differing
    data (classes, class names, training counts, test size) is warned about at the top. Given
    `test_logits` (a run folder -> the (logits, labels) of its own test set, e.g.
    `Predictor.from_run(folder).test()`), each run is also compared with the first image by image
    (`eval.paired`: difference, paired and between-class SE, bootstrap interval, verdict); without
    it nothing is re-evaluated."""
    runs, labels = _load_all(run_dirs)
    warnings = dataset_warnings(runs, labels)
    sections = [_warnings_html(warnings)] if warnings else []
    if note:
        sections.append(f'<p class="note">{esc(note)}</p>')
    rows = [(label, run["metrics"]) for label, run in zip(labels, runs) if run["metrics"]]
    timing = [k for k in ("fit_seconds", "wall_seconds") if any(m.get(k) is not None for _, m in rows)]
    sections.append("<h2>Metrics (accuracy and ECE in %)</h2>"
                    + metrics_table(list(references) + rows, extra=timing, ref_rows=[r[0] for r in references]))
    if test_logits is not None and len(runs) > 1:
        sections.append(_paired_html(runs, labels, test_logits, n_boot, seed))
    detailed = [(label, m) for label, m in rows if m.get("per_class")]
    if detailed:
        sections += _figures("Head vs tail", [_img(_png(plots.group_bars(detailed)), "group accuracy by run"),
                                              _img(_png(plots.per_class_comparison(detailed)), "per-class accuracy by run")])
        names = {tuple(r.get("name") for r in m["per_class"]) for _, m in detailed}
        if len(names) == 1:
            sections.append("<h2>Per-class results</h2>" + per_class_comparison_html(detailed))
    sections.append(_abstaining_html(rows))
    curves = [(label, m) for label, m in rows if plots.has_curves(m)]
    if curves and all(run in detailed for run in curves):
        curves = detailed  # the same colour per run as in the plots above (runs without curves draw nothing)
    if curves:
        sections += _figures("Training curves", [_img(_png(plots.training_curves(curves)), "training curves by run")])
    sections.append("<h2>Data</h2>" + _data_table(runs, labels))
    page = Path(out)
    links = "".join(f"<li>{esc(label)}: {relative_link(Path(d) / 'report.html', page, str(d))}</li>"
                    for label, d in zip(labels, run_dirs))
    sections.append(f"<h2>Runs</h2><ul>{links}</ul>")
    return write_text(page, _page(title, sections))
