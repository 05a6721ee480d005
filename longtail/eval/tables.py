"""HTML fragments of run reports: metric tables, the test data a run was evaluated on,
per-class tables with class names, data statistics, key/value tables; and `markdown_table`,
the results tables the benchmarks print (and the README shows).

The HTML helpers read a loaded run (`runs.load_run`: config, metrics, data_stats) and return
escaped HTML; `longtail.eval.report` assembles the pages.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from longtail.errors import DataError

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
OPEN_CLASSES = 30  # per-class tables longer than this start folded, with the worst classes shown
WORST_SHOWN = 10


def esc(value: Any) -> str:
    return html.escape(str(value))


def fmt(value: Any, percent: bool = True) -> str:
    """A table cell: floats in % (or 4 significant digits), None as a grey n/a."""
    if value is None:
        return '<span class="na">n/a</span>'
    if isinstance(value, float):
        return f"{100 * value:.2f}" if percent else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return esc(value)


def _seconds(value: Any) -> str:
    """A duration cell: 0.09, 1.99, 125.3 (seconds, two decimals below 100 s)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return fmt(value, percent=False)
    return f"{value:.2f}" if value < 100 else f"{value:.1f}"


def metrics_table(rows: Sequence[tuple[str, dict[str, Any]]], extra: Sequence[str] = (), ref_rows: Sequence[str] = ()) -> str:
    """An HTML table: one row per (name, metrics); accuracies and ECE in %."""
    head = "".join(f"<th>{label}</th>" for _, label in METRIC_COLUMNS)
    head += "".join(f"<th>{esc(e)}</th>" for e in extra)
    body = []
    for name, m in rows:
        cls = ' class="ref"' if name in ref_rows else ""
        cells = "".join(f"<td>{fmt(m.get(k))}</td>" for k, _ in METRIC_COLUMNS)
        cells += "".join(f"<td>{_seconds(m.get(e)) if e.endswith('seconds') else fmt(m.get(e), percent=False)}</td>"
                         for e in extra)
        body.append(f"<tr{cls}><td>{esc(name)}</td>{cells}</tr>")
    return f"<table><tr><th>run</th>{head}</tr>{''.join(body)}</table>"


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table, one line per row dict. `columns`: (header, key, format), format "pct"
    (a fraction shown in % with 2 decimals), "s" (text, left-aligned) or a format spec (".1f");
    None and NaN show as n/a."""
    def cell(value: Any, form: str) -> str:
        if value is None or (isinstance(value, float) and value != value):
            return "n/a"
        return f"{100 * value:.2f}" if form == "pct" else format(value, "" if form == "s" else form)

    lines = ["| " + " | ".join(header for header, _, _ in columns) + " |",
             "| " + " | ".join("---" if form == "s" else "---:" for _, _, form in columns) + " |"]
    lines += ["| " + " | ".join(cell(r[key], form) for _, key, form in columns) + " |" for r in rows]
    return "\n".join(lines)


def key_values(rows: dict[str, Any] | Sequence[tuple[str, Any]]) -> str:
    """A two-column table of (key, value) pairs, values escaped."""
    items = rows.items() if isinstance(rows, dict) else rows
    body = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in items)
    return f"<table class='kv'>{body}</table>"


def dotted(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys ('probe.loss', 'data_options.n_max'): one setting per row."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def stats_table(stats: dict[str, Any] | None) -> str:
    """The training set's statistics (class count, sizes, imbalance, shot groups)."""
    if not stats:
        return '<p class="note">No data statistics recorded.</p>'
    sizes = stats.get("group_sizes", {})
    return key_values([
        ("classes", stats.get("num_classes")),
        ("training images", f"{stats['total']:,}" if isinstance(stats.get("total"), int) else stats.get("total")),
        ("largest / smallest class", f"{stats.get('n_max')} / {stats.get('n_min')}"),
        ("imbalance ratio", f"{stats['imbalance_ratio']:.2f}" if stats.get("imbalance_ratio") else "inf"),
        ("head-tail ratio", f"{stats['head_tail_ratio']:.3f}" if stats.get("head_tail_ratio") is not None else "inf (no tail)"),
        ("many / medium / few classes", f"{sizes.get('many', 0)} / {sizes.get('medium', 0)} / {sizes.get('few', 0)}"),
        ("shot groups", f"many: more than {stats.get('many_threshold')} training images, "
                        f"few: fewer than {stats.get('few_threshold')}"),
    ])


def _source_run(config: dict[str, Any]) -> str | None:
    """The run folder whose data a soup / MonoSoup run was evaluated on (its first ingredient,
    or the fine-tuned W1), if it is one."""
    if config.get("kind") == "soup":
        first = (config.get("ingredients") or [None])[0]
    elif config.get("kind") == "monosoup":
        first = config.get("w1")
    else:
        return None
    return str(first) if first and (Path(first) / "config.yaml").is_file() else None


def _source_rows(config: dict[str, Any], depth: int = 0) -> list[tuple[str, str]]:
    """Where the test data came from: the feature file (probe), the dataset and split (fit), or
    those of the run a soup / MonoSoup was evaluated with."""
    rows: list[tuple[str, str]] = []
    if config.get("test"):
        rows.append(("test features", str(config["test"])))
        absolute = (config.get("absolute_paths") or {}).get("test")
        if absolute and absolute != config["test"]:
            rows.append(("absolute path", absolute))
        if config.get("val"):
            rows.append(("validation features", str(config["val"])))
    elif config.get("dataset"):
        options = ", ".join(f"{k}={v}" for k, v in (config.get("data_options") or {}).items())
        rows.append(("dataset", f"{config['dataset']}" + (f" ({options})" if options else "")))
        rows.append(("split", str(config.get("test_split") or "test")
                     + (f", list {config['test_list']}" if config.get("test_list") else "")))
        if config.get("val_per_class"):
            rows.append(("held out for validation", f"{config['val_per_class']} images per class of that split"))
        elif config.get("val_split"):
            rows.append(("validation", f"split {config['val_split']}"))
    elif depth < 2 and (source := _source_run(config)):
        from longtail.runs import load_run

        try:
            inner = _source_rows(load_run(source)["config"], depth + 1)
        except DataError:
            inner = []
        rows += [("evaluated as", f"the test data of {source}"), *inner]
    return rows


def describe_test_data(run: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, value) rows saying which test data the run's metrics were computed on: its source
    (`_source_rows`), then its size, classes and recorded fingerprint."""
    config, metrics = run["config"], run.get("metrics") or {}
    rows = _source_rows(config)
    record = metrics.get("test_data") or {}
    if record.get("name"):
        rows.append(("name", str(record["name"])))
    if metrics.get("num_test") is not None:
        rows.append(("test images", f"{metrics['num_test']:,}"))
    if metrics.get("num_classes") is not None:
        absent = metrics.get("absent_test_classes") or []
        rows.append(("classes", f"{metrics['num_classes']}" + (
            f" ({len(absent)} without test images: {', '.join(map(str, absent[:5]))}"
            f"{', …' if len(absent) > 5 else ''})" if absent else "")))
    fingerprint = record.get("fingerprint") or ((config.get("fingerprints") or {}).get("test") or {}).get("sha256")
    if fingerprint:
        rows.append(("fingerprint", str(fingerprint)[:16]))
    return rows


def test_data_html(run: dict[str, Any]) -> str:
    rows = describe_test_data(run)
    return key_values(rows) if rows else '<p class="note">The run recorded no test data.</p>'


def _class_rows(per_class: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(class index, row) sorted by training count, largest first (head to tail)."""
    indexed = list(enumerate(per_class))
    return sorted(indexed, key=lambda item: -(item[1].get("train_count") or 0))


def _class_table(rows: Sequence[tuple[int, dict[str, Any]]]) -> str:
    """The per-class table, sortable by a click on a header (`SORT_SCRIPT`); with precision, F1
    and the times predicted where the rows carry them (`with_class_scores`)."""
    scored = any(r.get("precision") is not None for _, r in rows)
    body = "".join(
        f"<tr><td>{i}</td><td>{esc(r.get('name', i))}</td><td>{esc(r.get('group', ''))}</td>"
        f"<td>{fmt(r.get('train_count'))}</td><td>{fmt(r.get('n_test'))}</td><td>{fmt(r.get('accuracy'))}</td>"
        + (f"<td>{fmt(r.get('precision'))}</td><td>{fmt(r.get('f1'))}</td><td>{fmt(r.get('n_predicted'))}</td>"
           if scored else "") + "</tr>"
        for i, r in rows
    )
    head = ("<th>#</th><th>class</th><th>group</th><th>training images</th><th>test images</th>"
            + ("<th>recall = accuracy (%)</th><th>precision (%)</th><th>F1 (%)</th><th>times predicted</th>"
               if scored else "<th>accuracy (%)</th>"))
    return f"<table class='classes sortable'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def with_class_scores(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """metrics["per_class"] rows with their precision, F1 and times predicted
    (metrics["class_scores"], `eval.confusion`) merged in, where the run recorded them."""
    rows = metrics.get("per_class") or []
    scores = metrics.get("class_scores") or {}
    keys = [k for k in ("precision", "f1", "n_predicted") if len(scores.get(k) or ()) == len(rows)]
    return [{**row, **{k: scores[k][i] for k in keys}} for i, row in enumerate(rows)]


# Sorts a table.sortable by the clicked column (numbers numerically, n/a last; again: reversed).
SORT_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.title = 'sort by this column'; th.style.cursor = 'pointer';
    th.addEventListener('click', function () {
      var down = th.getAttribute('data-order') !== 'desc';
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('data-order'); });
      th.setAttribute('data-order', down ? 'desc' : 'asc');
      var body = table.tBodies[0];
      var key = function (row) {
        var text = row.cells[col].textContent.trim(), x = parseFloat(text.replace(/,/g, ''));
        return isNaN(x) || !/^-?[0-9.,]+$/.test(text) ? text : x;
      };
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === 'n/a' || y === 'n/a') { return x === y ? 0 : x === 'n/a' ? 1 : -1; }
        var c = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
        return down ? -c : c;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def per_class_html(per_class: Sequence[dict[str, Any]]) -> str:
    """Per-class table with names (head to tail); long ones folded, with the worst classes
    shown above the fold."""
    rows = _class_rows(per_class)
    if len(rows) <= OPEN_CLASSES:
        return f"<details open><summary>{len(rows)} classes, head to tail</summary>{_class_table(rows)}</details>"
    scored = [item for item in rows if item[1].get("accuracy") is not None]
    worst = sorted(scored, key=lambda item: item[1]["accuracy"])[:WORST_SHOWN]
    return (f"<p>The {len(worst)} classes with the lowest test accuracy:</p>{_class_table(worst)}"
            f"<details><summary>all {len(rows)} classes, head to tail</summary>{_class_table(rows)}</details>")


def per_class_comparison_html(labelled: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """One row per class, one accuracy column per run (runs with the same class names only)."""
    first = labelled[0][1]["per_class"]
    head = "".join(f"<th>{esc(label)}</th>" for label, _ in labelled)
    body = "".join(
        f"<tr><td>{esc(r.get('name', i))}</td><td>{fmt(r.get('train_count'))}</td>"
        + "".join(f"<td>{fmt(m['per_class'][i].get('accuracy'))}</td>" for _, m in labelled) + "</tr>"
        for i, r in _class_rows(first)
    )
    fold = "" if len(first) > OPEN_CLASSES else " open"
    return (f"<details{fold}><summary>per-class accuracy (%) of {len(first)} classes, head to tail</summary>"
            f"<table class='sortable'><thead><tr><th>class</th><th>training images</th>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></details>")


def relative_link(target: Path, page: Path, text: str) -> str:
    """<a> to `target` relative to the folder of `page`, so a folder of reports can move."""
    href = os.path.relpath(Path(target).resolve(), Path(page).resolve().parent)
    return f"<a href='{esc(Path(href).as_posix())}'>{esc(text)}</a>"
