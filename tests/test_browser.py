"""Every report page in a real browser (issue 20, item 4): a run's report.html (with its error
gallery) and a comparison page, rendered by headless Chromium through playwright. Fails on a
console error or uncaught exception, a failed request, an image that did not load (naturalWidth
0), a plot that drew nothing (no coloured pixel), or a sortable table whose header click does not
sort. Skips, saying why, where playwright or Chromium is missing (.ci/run installs Debian's
chromium; `playwright install` is never run: its CDN is unreachable here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longtail.eval.metrics import evaluate
from longtail.eval.report import write_comparison_report, write_report
from longtail.runs import create_run

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

# per <img>: loaded, its size, and (plots only) the share of coloured pixels, via a canvas
_IMAGES_JS = """() => Array.from(document.images).map(img => {
  const out = {alt: img.alt, complete: img.complete, width: img.naturalWidth, plot: img.src.startsWith('data:image/png')};
  if (out.plot && img.naturalWidth) {
    const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data; let coloured = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (Math.max(d[i], d[i+1], d[i+2]) - Math.min(d[i], d[i+1], d[i+2]) > 60) coloured++;
    }
    out.coloured = coloured / (c.width * c.height);
  }
  return out;
})"""


def chromium() -> str:
    """The Chromium executable, or skip saying what is missing."""
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium with apt-get)")
    return path


def _run(folder: Path, seed: int, classes: int = 10) -> dict:
    rng = np.random.default_rng(seed)
    counts = np.round(300 * 0.6 ** np.arange(classes)).astype(int) + 3
    labels = np.repeat(np.arange(classes), 8)
    logits = rng.normal(size=(labels.size, classes))
    logits[np.arange(labels.size), labels] += np.linspace(3, 0.3, classes)[labels]
    metrics = evaluate(logits, labels, counts, class_names=[f"class {i}" for i in range(classes)])
    metrics["history"] = [{"epoch": e, "loss": 2.0 / e, "train_acc": 0.3 + 0.1 * e} for e in (1, 2, 3)]
    create_run(folder, "fit", {"method": "lift", "dataset": "synthetic_images", "seed": seed}).finish(metrics)
    return metrics


def _check(page, url: str) -> list[dict]:
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url[:80]}"))
    page.goto(url, wait_until="load")
    images = page.evaluate(_IMAGES_JS)
    problems += [f"image not loaded: {i['alt']}" for i in images if not i["complete"] or i["width"] == 0]
    problems += [f"empty plot: {i['alt']}" for i in images if i["plot"] and i.get("coloured", 0) < 0.002]
    assert not problems, "\n".join(problems)
    return images


def test_report_pages_render_in_chromium(tmp_path):
    executable = chromium()
    from playwright.sync_api import sync_playwright

    metrics = _run(tmp_path / "a", 0)
    _run(tmp_path / "b", 1)
    thumbs = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (12, 12, 3), dtype=np.uint8))
              for i in range(metrics["num_test"])]
    single = write_report(tmp_path / "a", test_image=thumbs.__getitem__)
    compared = write_comparison_report([tmp_path / "a", tmp_path / "b"], tmp_path / "cmp.html")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1150, "height": 900})
            images = _check(page, single.as_uri())
            alts = {i["alt"] for i in images}
            assert {"per-class accuracy", "group accuracy", "confusion matrix", "training curves"} <= alts
            assert sum(not i["plot"] for i in images) == len(metrics["tail_errors"]["shown"]) > 0  # the gallery
            # the per-class table sorts on a header click: by F1, descending, then ascending
            table = "table.classes.sortable"
            page.click(f"{table} th:has-text('F1')")
            f1 = [float(x) for x in page.eval_on_selector_all(f"{table} tbody tr td:nth-child(8)",
                                                              "tds => tds.map(td => td.textContent)")]
            assert f1 == sorted(f1, reverse=True) and f1 != sorted(f1)
            page.click(f"{table} th:has-text('F1')")
            f1 = [float(x) for x in page.eval_on_selector_all(f"{table} tbody tr td:nth-child(8)",
                                                              "tds => tds.map(td => td.textContent)")]
            assert f1 == sorted(f1)
            images = _check(browser.new_page(), compared.as_uri())
            assert {"group accuracy by run", "per-class accuracy by run"} <= {i["alt"] for i in images}
        finally:
            browser.close()
