"""The report's failure views: the shot-group story at the top of a run's page, the most-confused
class pairs, the confusion matrix of small label sets and the error gallery of the tail.

They read what `eval.confusion` put in a metrics dict (class_scores, confused_pairs,
tail_confused_pairs, confusion, error_flow, tail_errors); runs evaluated before those keys existed
get the parts their metrics allow. The gallery's pictures come from the caller (`longtail report`
reopens a fit run's test images), since this layer reads metrics and run folders only.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from typing import Any

from longtail.eval.tables import esc, fmt

GROUPS = ("many", "medium", "few")
THUMB = 96  # gallery thumbnails: the longer side in pixels
TestImage = Callable[[int], Any]  # a test-set index -> its PIL image


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _group_table(m: dict[str, Any]) -> str:
    """Per shot group: classes, test images, accuracy, and the share of all predictions that
    went to its classes next to its share of the test images (a head-biased model predicts the
    head more often than it occurs)."""
    rows = m.get("per_class") or []
    predicted = (m.get("class_scores") or {}).get("n_predicted") or []
    total_pred = sum(predicted) or 1
    total_test = sum(r.get("n_test") or 0 for r in rows) or 1
    sizes = m.get("group_sizes") or {}
    body = []
    for g in GROUPS:
        members = [i for i, r in enumerate(rows) if r.get("group") == g]
        n_test = sum(rows[i].get("n_test") or 0 for i in members)
        share = (f"<td>{100 * sum(predicted[i] for i in members) / total_pred:.1f}</td>"
                 if len(predicted) == len(rows) else "<td><span class='na'>n/a</span></td>")
        body.append(f"<tr><td>{g}</td><td>{fmt(sizes.get(g, len(members)))}</td><td>{fmt(n_test)}</td>"
                    f"<td>{fmt(m.get(g))}</td><td>{100 * n_test / total_test:.1f}</td>{share}</tr>")
    return ("<table><tr><th>shot group</th><th>classes</th><th>test images</th><th>accuracy (%)</th>"
            f"<th>% of test images</th><th>% of predictions</th></tr>{''.join(body)}</table>")


def _flow_sentence(m: dict[str, Any]) -> str:
    """Where the tail group's errors go: to head, medium or other tail classes."""
    flow, tail = m.get("error_flow") or {}, (m.get("tail_errors") or {}).get("group")
    entry = flow.get(tail) if tail else None
    if not entry or not entry.get("test"):
        return ""
    wrong = entry["test"] - entry["correct"]
    if wrong == 0:
        return f"<p>Every one of the {entry['test']:,} test images of the {tail}-shot classes is right.</p>"
    parts = ", ".join(f"<b>{100 * entry[f'to_{h}'] / wrong:.0f} %</b> to {'other ' if h == tail else ''}{h}-shot classes"
                      for h in GROUPS)
    return (f"<p>Of the {entry['test']:,} test images of the <b>{tail}-shot</b> classes, "
            f"{100 * entry['correct'] / entry['test']:.1f} % are right; their {wrong:,} errors go {parts}.</p>")


def _pair_text(pair: dict[str, Any]) -> str:
    return (f"{esc(pair['true_name'])} → {esc(pair['pred_name'])} "
            f"({pair['count']:,}, {100 * pair['share']:.0f} % of its test images)")


def story_html(m: dict[str, Any]) -> str:
    """The shot-group story on one screen: accuracy of many / medium / few, the head-tail gap,
    where the tail's errors go, and its most frequent confusions."""
    if all(m.get(g) is None for g in GROUPS):
        return ""
    present = [g for g in GROUPS if m.get(g) is not None]
    head, tail = present[0], present[-1]
    gap = (f"<p>Gap {head} − {tail}: <b>{100 * (m[head] - m[tail]):.1f} points</b> (many {_pct(m.get('many'))}, "
           f"medium {_pct(m.get('medium'))}, few {_pct(m.get('few'))}; class mean {_pct(m.get('class_mean'))}).</p>")
    pairs = (m.get("tail_confused_pairs") or [])[:3]
    confusions = (f"<p>The tail's most frequent confusions: {'; '.join(_pair_text(p) for p in pairs)}.</p>"
                  if pairs else "")
    missing = "" if "error_flow" in m else (
        "<p class='note'>This run's metrics predate the error views (confused pairs, precision / recall, "
        "error gallery); <code>longtail eval</code> re-evaluates it.</p>")
    return ("<div class='story'><h2>Head vs tail at a glance</h2>" + _group_table(m) + gap
            + _flow_sentence(m) + confusions + missing + "</div>")


def _pairs_table(pairs: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]) -> str:
    def cls(i: int) -> str:
        r = rows[i] if i < len(rows) else {}
        return f"<td>{esc(r.get('name', i))}</td><td>{esc(r.get('group', ''))}</td><td>{fmt(r.get('train_count'))}</td>"

    body = "".join(f"<tr>{cls(p['true'])}{cls(p['pred'])}<td>{p['count']:,}</td><td>{100 * p['share']:.1f}</td></tr>"
                   for p in pairs)
    return ("<table class='pairs sortable'><thead><tr><th>true class</th><th>group</th><th>training images</th>"
            "<th>predicted as</th><th>group</th><th>training images</th><th>images</th>"
            f"<th>% of the true class</th></tr></thead><tbody>{body}</tbody></table>")


def confused_pairs_html(m: dict[str, Any]) -> str:
    """The most-confused (true, predicted) class pairs, overall and among the tail's classes;
    top-k lists, so they stay readable at thousands of classes."""
    rows = m.get("per_class") or []
    parts = []
    for key, what in (("confused_pairs", "All classes"), ("tail_confused_pairs", "Tail classes")):
        pairs = m.get(key) or []
        if pairs:
            tail = (m.get("tail_errors") or {}).get("group")
            title = what if key == "confused_pairs" else f"{what} ({tail}-shot): their most frequent errors"
            parts.append(f"<h3>{esc(title)}</h3>" + _pairs_table(pairs, rows))
    if not parts:
        return ""
    return ("<h2>Most-confused class pairs</h2><p class='note'>Test images of the true class predicted as "
            "the other, largest counts first (off-diagonal cells of the confusion matrix, counted without "
            "building it).</p>" + "".join(parts))


def thumbnail(image: Any, side: int = THUMB) -> str:
    """A PIL image as a small JPEG data URI (longer side `side` pixels, quality 80)."""
    from PIL import Image

    image = image.convert("RGB")
    scale = side / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def gallery_html(m: dict[str, Any], test_image: TestImage | str | None) -> str:
    """Thumbnails of misclassified test images of the tail classes (metrics["tail_errors"]) with
    true / predicted class and confidence. `test_image` opens a test image by index; a string
    says why there are no pictures (a probe run on feature files, images moved)."""
    record = m.get("tail_errors") or {}
    shown = record.get("shown") or []
    if not shown:
        return ""
    group, rows = record.get("group"), m.get("per_class") or []
    head = (f"<h2>Error gallery: {group}-shot classes</h2><p class='note'>{len(shown)} of the "
            f"{record.get('errors', len(shown)):,} misclassified test images of the {group}-shot classes, "
            "most confident mistakes first (at most 3 per class).</p>")
    if not callable(test_image):
        why = esc(test_image) if isinstance(test_image, str) else \
            "pictures are added by <code>longtail report RUN</code>, which reopens the test images"
        return head + f"<p class='note'>No pictures: {why}.</p>"
    cells = []
    for e in shown:
        true, pred = (rows[e["true"]].get("name", e["true"]), rows[e["pred"]].get("name", e["pred"])) \
            if max(e["true"], e["pred"]) < len(rows) else (e["true"], e["pred"])
        alt = f"true {true}, predicted {pred} ({100 * e['confidence']:.0f} %)"
        cells.append(f"<figure><img src='{thumbnail(test_image(e['index']))}' alt='{esc(alt)}' title='{esc(alt)}'>"
                     f"<figcaption><b>{esc(true)}</b><br>→ {esc(pred)}<br>{100 * e['confidence']:.0f} %"
                     "</figcaption></figure>")
    return head + f"<div class='gallery'>{''.join(cells)}</div>"
