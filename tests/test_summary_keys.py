"""One summary key list (eval.metrics): `fit --json`, the comparison rows of `soup --eval`,
MonoSoup and LT-Soups, the report's group plot and the tracker's final metrics all read it."""

from __future__ import annotations

import json

from longtail.commands.fit import TRAINING_KEYS, percent_keys
from longtail.eval.metrics import COMPARISON_KEYS, SHOT_GROUPS, SUMMARY_KEYS
from longtail.methods.tracking import final_scalars
from longtail.soups.soup_run import format_table


def test_fit_and_soup_summaries_show_the_same_keys(tiny_runs):
    fit = tiny_runs["ft0"]["summary"]  # what `longtail fit --json` printed
    assert list(fit) == [*SUMMARY_KEYS, *TRAINING_KEYS]  # every command's --json contract, + training
    assert percent_keys()[: len(SHOT_GROUPS)] == SHOT_GROUPS  # the plain summary line, same order
    for kind in ("soup", "mono"):
        rows = json.loads((tiny_runs["root"] / kind / "comparison.json").read_text())
        assert rows and all(list(r) == ["name", *COMPARISON_KEYS] for r in rows), kind
        header = format_table(rows).splitlines()[0].split()
        assert header == ["model", "all", "bal", "many", "med", "few"]
    metrics = json.loads((tiny_runs["root"] / "ft0" / "metrics.json").read_text())
    logged = final_scalars(metrics)
    assert {"test/all", "test/class_mean", "test/ece", "test/head_tail_ratio"} <= set(logged)
    # the tracker logs every shot group the summary has a value for (empty groups are None in both)
    assert {k for k in SHOT_GROUPS if fit[k] is not None} == {k for k in SHOT_GROUPS if f"test/{k}" in logged}
