"""`longtail list` (issue 20, item 5): every entry of every registry has a real one-line
description: non-empty, its own (not a sentence shared with other entries or a class's generic
docstring), whole (not cut mid-sentence or inside brackets), and printed in full."""

from __future__ import annotations

import pytest

from longtail import cli
from longtail.commands.list import REGISTRIES, entries, first_sentence
from longtail.methods.run_kinds import RunKind

GENERIC = {first_sentence(RunKind.__doc__ or ""), first_sentence(dict.__doc__ or "")}


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += (char in "([{") - (char in ")]}")
        if depth < 0:
            return False
    return depth == 0


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_entry_has_its_own_whole_description(kind, capsys):
    rows = entries(kind)
    assert rows, kind
    for name, text in rows:
        assert text.strip(), f"{kind} {name}: no description"
        assert text not in GENERIC, f"{kind} {name}: generic description {text!r}"
        assert _balanced(text) and text.rstrip()[-1] in ".)", f"{kind} {name}: cut off? {text!r}"
        assert "\n" not in text, f"{kind} {name}: more than one line"
    texts = [text for _, text in rows]
    shared = {t for t in texts if texts.count(t) > 1}
    assert not shared, f"{kind}: entries share a description: {shared}"
    assert cli.main(["list", kind]) == 0
    printed = capsys.readouterr().out.splitlines()
    width = max(len(name) for name, _ in rows)
    for name, text in rows:  # printed whole, not truncated
        assert f"  {name:<{width}}  {text}" in printed, (kind, name)


def test_first_sentence_joins_lines_and_ignores_abbreviations_and_brackets():
    doc = """Partial fine-tuning: the last blocks (include_top; the old
    name is kept). Second sentence.

    Details."""
    assert first_sentence(doc) == "Partial fine-tuning: the last blocks (include_top; the old name is kept)."
    assert first_sentence("cRT (Kang et al. 2020): re-trained. More.") == "cRT (Kang et al. 2020): re-trained."
    assert first_sentence("SMOTE (Chawla et al. 2002): x. Singleton classes repeat.") == "SMOTE (Chawla et al. 2002): x."


def test_greedy_is_listed_once_from_where_it_is_declared(capsys):
    from longtail.soups.merge import MERGE_METHODS
    from longtail.soups.soup_run import SOUP_METHODS

    assert cli.main(["list", "merges"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:] if line.strip()]
    assert sorted(listed) == sorted(SOUP_METHODS) and listed.count("greedy") == 1
    assert "greedy" not in MERGE_METHODS  # a procedure over evaluated ingredients, not merge coefficients
