"""Greedy soup (Wortsman et al. 2022) selected on balanced validation accuracy.

Ingredients are ranked by their own score; each is added to the soup (a uniform average of
the members) only if the soup's balanced validation accuracy strictly improves, so the
result never scores below the best single ingredient. Every decision is logged as JSONL.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longtail.io import to_jsonable
from longtail.soups.merge import Source, StateDict, load_state_dict, source_name

# Score of a state dict: a float (balanced accuracy) or a metrics dict holding "class_mean".
Evaluate = Callable[[Mapping[str, torch.Tensor]], "float | Mapping"]


@dataclass
class GreedyResult:
    """The soup, the chosen ingredient indices and the decision log (one dict per step)."""

    state_dict: StateDict
    members: list[int]
    score: float
    log: list[dict] = field(default_factory=list)


def _score(value) -> float:
    return float(value["class_mean"] if isinstance(value, Mapping) else value)


def greedy_soup(
    ingredients: Sequence[Source],
    evaluate: Evaluate,
    log_path: str | Path | None = None,
    names: Sequence[str] | None = None,
) -> GreedyResult:
    """Greedy soup over `ingredients`; `evaluate(state_dict)` returns balanced val accuracy.

    Memory: the fp32 running sum of the members, one candidate and one evaluated model.
    """
    names = list(names or [source_name(s, i) for i, s in enumerate(ingredients)])
    log: list[dict] = []
    sink = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115

    def record(entry: dict) -> None:
        log.append(entry)
        if sink:
            sink.write(json.dumps(to_jsonable(entry)) + "\n")
            sink.flush()

    try:
        scores = []
        for i, src in enumerate(ingredients):
            scores.append(_score(evaluate(load_state_dict(src))))
            record({"step": "score", "index": i, "name": names[i], "score": scores[i]})
        order = sorted(range(len(ingredients)), key=lambda i: -scores[i])
        first = load_state_dict(ingredients[order[0]])
        dtypes = {k: v.dtype for k, v in first.items()}
        # copy: .float() of a float32 tensor is the caller's own tensor, which add_ would mutate
        total = {k: v.to(torch.float32, copy=True) if v.is_floating_point() else v for k, v in first.items()}
        members, best = [order[0]], scores[order[0]]
        record({"step": "start", "index": order[0], "name": names[order[0]], "score": best})
        for i in order[1:]:
            cand = load_state_dict(ingredients[i])
            n = len(members) + 1
            trial = {
                k: ((total[k] + cand[k].float()) / n).to(dtypes[k]) if total[k].is_floating_point() else total[k]
                for k in total
            }
            score = _score(evaluate(trial))
            accepted = score > best
            record({"step": "try", "index": i, "name": names[i], "soup_score": score,
                    "best_before": best, "accepted": accepted})
            if accepted:
                for k in total:
                    if total[k].is_floating_point():
                        total[k].add_(cand[k].float())
                members.append(i)
                best = score
            del cand, trial
        n = len(members)
        soup = {k: (v / n).to(dtypes[k]) if v.is_floating_point() else v for k, v in total.items()}
        record({"step": "done", "members": members, "names": [names[i] for i in members], "score": best})
        return GreedyResult(soup, members, best, log)
    finally:
        if sink:
            sink.close()
