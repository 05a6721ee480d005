"""What a comparison of runs needs besides their metrics: a distinct label per run, built from
what differs between the runs' configs, and warnings when the runs were trained or tested on
different data (their numbers are then not comparable)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from longtail.eval.tables import dotted

# Config keys that never tell runs apart for a reader: bookkeeping, where files live, and
# settings that do not change results.
IGNORED_KEYS = frozenset({
    "kind", "format_version", "label", "absolute_paths", "fingerprints", "device", "num_workers",
    "progress", "eval_batch_size", "root", "feature_dim", "num_classes", "origin.pipeline", "origin.label",
})
MAX_ITEMS = 4  # key=value pairs shown per label before '+N more'
MAX_VALUE = 32  # characters of one value before it is shortened


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys (`tables.dotted`); a probe's options (under `probe`) lose the prefix."""
    return {k.removeprefix("probe."): v for k, v in dotted(config).items()}


def _show(value: Any) -> str:
    """A config value as a label shows it: paths by their last part, long values shortened."""
    if isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    elif isinstance(value, str) and ("/" in value or "\\" in value):
        text = Path(value).name or value
    else:
        text = str(value)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def explicit_label(config: dict[str, Any]) -> str | None:
    """The label the user gave the run (`--label`), or None when the saved label is only the
    default name a command writes (the probe method, 'soup (METHOD)', 'MonoSoup')."""
    label = config.get("label")
    if not label:
        return None
    defaults = {(config.get("probe") or {}).get("method"), f"soup ({config.get('method')})", "MonoSoup"}
    return None if label in defaults else str(label)


def _named(run: dict[str, Any]) -> tuple[str, frozenset[str]]:
    """(a short name for a run from its kind: 'probe linear', 'fit lift', 'soup (greedy)',
    'MonoSoup', or the name a pipeline gave it ('ingredient b=2^1 #0'); the flattened config
    keys that name shows, so a label does not repeat them)."""
    config = run["config"]
    kind = str(config.get("kind", "run"))
    if kind == "probe":
        method = (config.get("probe") or {}).get("method", "")
        return f"probe {method}".strip(), frozenset({"method"} if method else ())
    method = config.get("method")
    given = config.get("label") or (config.get("origin") or {}).get("label")
    name = str(given) if given else f"{kind} {method}" if method else kind
    return name, frozenset({"method"} if method and str(method) in name else ())


def default_name(run: dict[str, Any]) -> str:
    """A short name for a run from its kind: 'probe linear', 'fit lift', 'soup (greedy)',
    'MonoSoup', or the name a pipeline gave it ('ingredient b=2^1 #0')."""
    return _named(run)[0]


def _unset(value: Any) -> bool:
    """None, an empty dict, or a key the config does not have: the default of an optional setting."""
    return value is None or value == {}


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The config flattened, with file paths replaced by the absolute paths the run recorded
    (so 'train.npz' and '/data/train.npz' naming the same file do not differ); unset values
    (None, {}) are dropped, so a key one run leaves unset and another lacks never differs."""
    flat = _flatten(config)
    for split, path in (config.get("absolute_paths") or {}).items():
        if path and split in flat:
            flat[split] = path
    return {k: v for k, v in flat.items() if not _unset(v)}


def _ignored(key: str) -> bool:
    """Whether a dotted key is, or lies under, one of IGNORED_KEYS."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in IGNORED_KEYS for i in range(1, len(parts) + 1))


def _differences(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Keys (dotted, in the first config's order) whose values are not the same in all configs
    (a key unset in every config never differs)."""
    flat = [_comparable(c) for c in configs]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    return [k for k in keys if not _ignored(k) and len({repr(f.get(k)) for f in flat}) > 1]


def _diff_labels(configs: Sequence[dict[str, Any]], shown: Sequence[frozenset[str]] = ()) -> list[str]:
    """'key=value, ...' per config from every key whose values differ between the configs, but
    the keys its `shown` set says its name already tells: a config shows the keys where its value
    is not the one most configs share (all of them on a tie) and always the first of them; keys
    it leaves unset (None) are left out ('' when nothing else is left: the name says it) unless
    another config's label would then be the same. Distinct configs get distinct labels: two
    configs showing the same pairs agree on every differing key."""
    keys = _differences(configs)
    flat = [_comparable(c) for c in configs]
    shown = list(shown) or [frozenset()] * len(configs)
    full, short = [], []
    for f, hidden in zip(flat, shown):
        items = []
        for key in keys:
            if key in hidden:
                continue
            counts = Counter(repr(g.get(key)) for g in flat)
            top = counts.most_common()
            usual = top[0][0] if len(top) == 1 or top[0][1] > top[1][1] else None
            if not items or repr(f.get(key)) != usual:
                items.append((key, f.get(key)))
        full.append(items)
        short.append([(k, v) for k, v in items if v is not None])
    seen = Counter(repr(s) for s in short)
    labels = []
    for items, compact in zip(full, short):
        chosen = compact if seen[repr(compact)] == 1 else items
        text = [f"{key}={_show(value)}" for key, value in chosen]
        extra = len(text) - MAX_ITEMS
        labels.append(", ".join(text[:MAX_ITEMS]) + (f", +{extra} more" if extra > 0 else ""))
    return labels


def run_labels(runs: Sequence[dict[str, Any]]) -> list[str]:
    """One distinct label per loaded run (`runs.load_run`): the user's `--label` where given;
    else what differs between the configs of the runs of its kind, from every differing key
    ('loss=la, init=prototypes' vs 'loss=ce'), prefixed by the run's default name ('probe
    linear: loss=ce' vs 'probe cosine: loss=la') unless every run shares that name (then the
    name says nothing); a run alone of its kind is its name. Runs that still tie get their
    folder name appended."""
    labels: list[str | None] = [explicit_label(r["config"]) for r in runs]
    named = [_named(r) for r in runs]
    names = [n for n, _ in named]
    open_ = [i for i, label in enumerate(labels) if label is None]
    kinds: dict[str, list[int]] = {}
    for i in open_:
        kinds.setdefault(str(runs[i]["config"].get("kind", "run")), []).append(i)
    for members in kinds.values():
        if len(members) == 1:
            labels[members[0]] = names[members[0]]
            continue
        configs = [runs[i]["config"] for i in members]
        alone = all(names[i] == names[members[0]] for i in range(len(runs)))  # no other name in the comparison
        diffs = _diff_labels(configs, [frozenset() if alone else named[i][1] for i in members])
        for i, diff in zip(members, diffs):
            labels[i] = (diff if alone else f"{names[i]}: {diff}") if diff else names[i]
    final = [str(label) for label in labels]
    counts = Counter(final)
    return [f"{label} ({Path(r['folder']).name})" if counts[label] > 1 else label for label, r in zip(final, runs)]


def _data_of(run: dict[str, Any]) -> dict[str, Any]:
    """Class count, class names, training counts and test size of a run, from what it saved.
    The counts of a run trained on a deliberate subset (an LT-Soups ingredient's
    `balance_exponent`) are left out: they differ from the full set's by design."""
    stats, metrics = run.get("data_stats") or {}, run.get("metrics") or {}
    per_class = metrics.get("per_class") or []
    names = stats.get("class_names") or [r.get("name") for r in per_class] or None
    counts = stats.get("counts") or [r.get("train_count") for r in per_class] or None
    return {"classes": stats.get("num_classes") or metrics.get("num_classes") or (len(names) if names else None),
            "names": names, "counts": None if run["config"].get("balance_exponent") is not None else counts,
            "test": metrics.get("num_test")}


def dataset_warnings(runs: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[str]:
    """One line per way the runs' data differ (number of classes, class names, training counts,
    test-set size); empty when they agree or a run did not record it."""
    data = [_data_of(r) for r in runs]

    def listing(key: str, show=str) -> str:
        return "; ".join(f"{label}: {show(d[key])}" for label, d in zip(labels, data) if d[key] is not None)

    def differ(key: str) -> bool:
        return len({repr(d[key]) for d in data if d[key] is not None}) > 1

    out = []
    if differ("classes"):
        out.append(f"different numbers of classes ({listing('classes')})")
    elif differ("names"):
        out.append("different class names (" + listing(
            "names", lambda n: ", ".join(_show(x) for x in n[:3]) + (", …" if len(n) > 3 else "")) + ")")
    if not differ("classes") and differ("counts"):
        out.append("different training counts per class (" + listing(
            "counts", lambda c: f"{sum(c):,} images, largest {max(c):,}, smallest {min(c):,}") + ")")
    if differ("test"):
        out.append(f"different test-set sizes ({listing('test', lambda n: f'{n:,} images')})")
    return out
