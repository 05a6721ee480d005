"""The `longtail` command line: one subcommand per module in `longtail/commands/`.

Each command module defines HELP (one line), DESCRIPTION, `add_arguments(parser)` and
`run(args) -> int`; heavy imports happen inside `run` so that `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from longtail import __version__
from longtail.errors import LongtailError

COMMANDS = (  # command name; its module is longtail/commands/<name with '-' -> '_'>.py
    "list",
    "stats",
    "features",
    "probe",
    "eval",
    "report",
    "demo",
    "fit",
    "soup",
    "monosoup",
    "lt-soups",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longtail",
        description=(
            "Long-tailed image classification on vision foundation models: data statistics, "
            "frozen features, long-tail-aware probes, parameter-efficient fine-tuning, "
            "model soups, and head/medium/tail evaluation reports."
        ),
        epilog="Run 'longtail COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"longtail {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"longtail.commands.{name.replace('-', '_')}")
        cmd = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # KEY=VALUE pairs may come after options (`stats DATA --many 5 many=30`); argparse stops
    # filling a positional list at the first option, so collect the rest here.
    pairs = [a for a in unknown if "=" in a and not a.startswith("-")]
    rest = [a for a in unknown if a not in pairs]
    if rest or (pairs and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(rest or pairs)}")
    if pairs:
        args.overrides = [*args.overrides, *pairs]
    try:
        return int(args._run(args) or 0)
    except LongtailError as err:
        print(f"longtail {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"longtail {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
