"""A new user's first hour (issue 13, observation 8): the default probe is long-tail-aware, the
README says how to reach the command, its first examples run offline, and the demo's time is
stated once. (The "your own images" walk-through itself runs in test_docs_commands.py.)"""

from __future__ import annotations

import json
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
