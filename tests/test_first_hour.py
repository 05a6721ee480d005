"""A new user's first hour (issue 13, observation 8): the default probe is long-tail-aware, the
README says how to reach the command, its first examples run offline, and the demo's time is
stated once. (The "your own images" walk-through itself runs in test_docs_commands.py.)"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from longtail.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPLITS = {s: f"synthetic_features:{s}" for s in ("train", "test")}


def _probe(tmp_path, capsys, *extra) -> dict:
    assert main(["probe", "--train", SPLITS["train"], "--test", SPLITS["test"], "--json", "--no-report",
                 "--out", str(tmp_path / "_".join(extra or ("default",))), *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_default_probe_is_long_tail_aware(tmp_path, capsys):
    default = _probe(tmp_path, capsys)
    plain = _probe(tmp_path, capsys, "method=linear", "loss=ce")
    # imbalance ratio 100: plain CE almost never predicts a few-shot class; the default does
    assert plain["few"] < 0.1 and default["few"] > 0.3
    assert default["all"] > plain["all"] + 0.15


def test_readme_first_steps():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "source .venv/bin/activate" in readme
    command_line = readme.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    first = [line for line in command_line.splitlines() if line.startswith("longtail")][:3]
    assert not any("clip_vit" in line for line in first), first  # no hub download in the first steps
    demo = (ROOT / "longtail" / "commands" / "demo.py").read_text(encoding="utf-8")
    sections = re.split(r"\n#+ ", readme)
    about_demo = [t for t in sections if t.startswith(("Quickstart", "Offline demo"))] + [demo]
    times = set(re.findall(r"about (\d+) s\b", "\n".join(about_demo)))
    assert len(times) == 1, times  # one measured demo time, stated the same way everywhere


def test_readme_quickstart_says_longtail_is_not_on_path():
    """Issue 22 item 17: after `make demo`, `longtail` lives in .venv; the quickstart (still
    exactly two commands) says so right after them, not only a section later."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block, after = quickstart.split("```bash\n", 1)[1].split("```", 1)
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == ["make demo", "make test"]
    first = after.strip().split("\n\n", 1)[0]
    assert "not on your PATH" in first and "source .venv/bin/activate" in first


def _readme_demo_rows() -> dict[str, list[str]]:
    """label -> [all, many, medium, few, ECE, 3 seeds] of the README's demo table (and the Bayes row;
    the table's last two columns, the paired difference to the reference row and its verdict,
    need the reference row, which the cheap run here leaves out)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Offline demo", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 10 and cells[0] not in ("method", "---"):
            rows[cells[0]] = cells[1:6] + cells[7:8]
    return rows


def _printed_demo_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if line.startswith("│") and len(cells) == 10:
            rows[cells[0]] = cells[1:6] + cells[7:8]
    return rows


def test_readme_demo_table_is_what_the_demo_prints(tmp_path, capsys, monkeypatch):
    """Issue 22 item 17: the README's demo table had drifted from `longtail demo` (LA's many /
    few, the temperature-scaled ECE, ...). Its rows are the demo's methods in order, and its
    numbers are what the demo prints: the cheap rows (about 1 s of fitting, no reports) run
    here, with one stochastic row and its three seeds; LONGTAIL_DEMO_FULL=1 runs all fifteen (about 25 s). Two torch threads, as the README's
    run on 2 CPU cores (SMOTE's 70.35 % rounds either way with the thread count)."""
    import torch

    from longtail.commands import demo

    readme = _readme_demo_rows()
    labels = [label for label, _ in demo.DEMO_METHODS]
    assert list(readme) == [*labels, "Bayes limit (balanced)"]
    if not os.environ.get("LONGTAIL_DEMO_FULL"):
        cheap = {"linear CE", "linear CE + post-hoc LA (tau on val)", "linear LA", "linear balanced softmax",
                 "zero-shot (prototypes)", "prototype init + LA + interpolation", "gaussian-kde + LR"}
        monkeypatch.setattr(demo, "DEMO_METHODS", tuple(row for row in demo.DEMO_METHODS if row[0] in cheap))
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["demo", "--out", str(tmp_path / "demo"), "--no-report", "--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = _printed_demo_rows(capsys.readouterr().out)
    assert len(printed) == len(demo.DEMO_METHODS) + 1
    assert {label: readme[label] for label in printed} == printed
