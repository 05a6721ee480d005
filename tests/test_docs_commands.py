"""Every offline command documented in README.md and docs/*.md runs as written.

A fenced ```bash block right after the line `<!-- offline: runs in order -->` is a script of
`longtail ...` commands that need no download; this test runs each block's commands in order
(through `longtail.cli.main`, in a fresh folder with its own cache) and checks each exits 0.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from longtail import cli

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- offline: runs in order -->"
BLOCK = re.compile(re.escape(MARKER) + r"\s*```bash\n(.*?)```", re.S)


def offline_blocks() -> list[tuple[str, list[str]]]:
    """(document:index, commands) of every marked block."""
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for k, match in enumerate(BLOCK.finditer(doc.read_text(encoding="utf-8"))):
            text = match.group(1).replace("\\\n", " ")
            lines = [line.split(" #")[0].strip() for line in text.splitlines()]
            commands = [line for line in lines if line and not line.startswith("#")]
            out.append((f"{doc.relative_to(ROOT)}:{k}", commands))
    return out


BLOCKS = offline_blocks()


def test_the_docs_have_offline_examples():
    assert any(name.startswith("README.md") for name, _ in BLOCKS)


@pytest.mark.parametrize("name, commands", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_documented_offline_commands_run(name, commands, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "longtail", f"{name}: only longtail commands belong in an offline block: {command}"
        assert cli.main(argv[1:]) == 0, f"{name}: failed: {command}"
