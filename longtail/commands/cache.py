"""`longtail cache`: list, size and prune the feature cache and the frozen-prefix cache."""

from __future__ import annotations

import argparse
import json
import re
import time

HELP = "list, size or prune the feature and frozen-prefix caches ($LONGTAIL_CACHE)"
DESCRIPTION = """\
The feature cache ($LONGTAIL_CACHE/features, default ~/.cache/longtail/features) keeps the
features `longtail features` extracted; the frozen-prefix cache ($LONGTAIL_CACHE/prefix) keeps
the hidden states `fit` trains from (prefix_cache=auto / on). Entries are keyed on the weights,
the preprocessing and the images' content, so they never go stale, but they stay until removed.

  list    every entry: kind, state, size, last use, backbone, dataset
            ready    a finished entry
            partial  the shards of an unfinished build (the same command continues it)
            leftover temporary files of a killed build (removed by its next run, or by prune)
  size    the bytes per cache and in total
  prune   remove entries: --older-than AGE (not used for AGE: 30d, 12h, 90m, 2w), --partial
          (unfinished builds and leftovers), or --all; --dry-run says what would go.
          Entries a running longtail process is building are never removed.

examples:
  longtail cache list
  longtail cache size --json
  longtail cache prune --older-than 30d
  longtail cache prune --partial --dry-run
  longtail cache prune --all
"""

ACTIONS = ("list", "size", "prune")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=ACTIONS, help="list, size or prune")
    p.add_argument("--dir", help="the cache root (default $LONGTAIL_CACHE, else ~/.cache/longtail)")
    p.add_argument("--older-than", metavar="AGE", help="prune (or list) entries not used for AGE, e.g. 30d, 12h")
    p.add_argument("--partial", action="store_true", help="prune unfinished builds and leftovers of killed ones")
    p.add_argument("--all", action="store_true", help="prune every entry")
    p.add_argument("--dry-run", action="store_true", help="prune: say what would be removed, remove nothing")
    p.add_argument("--json", action="store_true", help="list / size: print JSON")


def parse_age(text: str) -> float:
    """Seconds of an age such as 30d, 12h, 90m, 2w or 45s (ConfigError otherwise)."""
    from longtail.errors import ConfigError

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if match is None:
        raise ConfigError(f"--older-than {text!r}: expected a number and a unit (s, m, h, d, w), e.g. 30d")
    return float(match[1]) * UNITS[match[2]]


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def human_age(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f}{unit} ago"
    return "just now"


def _dataset(entry) -> str | None:
    """The dataset an entry holds, from its meta (None when it has none to read). Reading it is
    not a use: the file's access time is put back (it is the entry's last use)."""
    import os

    from longtail.data.features import read_meta

    suffix = ".npz" if entry.kind == "features" else ".json"
    path = next((p for p in entry.paths if p.suffix == suffix and not p.name.startswith(".")), None)
    if path is None:
        return None
    try:
        before = path.stat()
        meta = read_meta(path) if suffix == ".npz" else json.loads(path.read_text(encoding="utf-8"))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    except (OSError, ValueError):
        return None
    return meta.get("dataset") if isinstance(meta, dict) else None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from longtail.errors import ConfigError
    from longtail.models.cache_store import cache_entries, cache_root, remove_entry

    root = Path(args.dir) if args.dir else cache_root()
    age = parse_age(args.older_than) if args.older_than is not None else None
    if args.action != "prune" and (args.partial or args.all or args.dry_run):
        raise ConfigError(f"--partial, --all and --dry-run are for prune, not {args.action}")
    if args.action == "prune" and sum((age is not None, args.partial, args.all)) != 1:
        raise ConfigError("prune needs one of --older-than AGE, --partial or --all")
    now = time.time()
    entries = [e for e in cache_entries(root) if age is None or now - e.used >= age]
    if args.action == "list":
        shown = [e for e in entries if e.state != "lock"]
        if args.json:
            print(json.dumps([{"kind": e.kind, "state": e.state, "bytes": e.size, "last_used": e.used,
                               "backbone": e.backbone, "dataset": _dataset(e), "busy": e.busy, "name": e.name,
                               "paths": [str(p) for p in e.paths]} for e in shown]))
            return 0
        if not shown:
            print(f"no cache entries under {root}")
            return 0
        print(f"{'kind':<9} {'state':<9} {'size':>10}  {'last used':<10} {'backbone':<20} dataset / entry")
        for e in shown:
            state = "building" if e.busy else e.state
            print(f"{e.kind:<9} {state:<9} {human_size(e.size):>10}  {human_age(now - e.used):<10} "
                  f"{e.backbone:<20} {_dataset(e) or '-'} / {e.name}")
        print(f"{len(shown)} {'entry' if len(shown) == 1 else 'entries'}, {human_size(sum(e.size for e in shown))} under {root}")
        return 0
    if args.action == "size":
        totals = {kind: sum(e.size for e in entries if e.kind == kind) for kind in ("features", "prefix")}
        counts = {kind: sum(1 for e in entries if e.kind == kind and e.state != "lock") for kind in totals}
        if args.json:
            print(json.dumps({"root": str(root), "bytes": {**totals, "total": sum(totals.values())},
                              "entries": counts}))
            return 0
        for kind, size in totals.items():
            print(f"{kind:<9} {human_size(size):>10}  ({counts[kind]} entries) {root / kind}")
        print(f"{'total':<9} {human_size(sum(totals.values())):>10}")
        return 0
    chosen = [e for e in entries if args.all or age is not None or e.state in ("partial", "leftover", "lock")]
    busy = [e for e in chosen if e.busy]
    chosen = [e for e in chosen if not e.busy]
    freed = 0
    for e in chosen:
        freed += e.size if args.dry_run else remove_entry(e)
    verb = "would remove" if args.dry_run else "removed"
    listed = [e for e in chosen if e.state != "lock"]
    print(f"{verb} {len(listed)} {'entry' if len(listed) == 1 else 'entries'} ({human_size(freed)}) under {root}"
          + (f"; kept {len(busy)} that a running longtail process is building" if busy else ""))
    return 0
