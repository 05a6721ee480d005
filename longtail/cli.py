"""The `longtail` command line: one subcommand per module in `longtail/commands/`.

Each command module defines HELP (one line), DESCRIPTION, `add_arguments(parser)` and
`run(args) -> int`; heavy imports happen inside `run` so that `--help` stays fast, which is
also why importing every command module here, explicitly, costs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from types import ModuleType

from longtail import __version__
from longtail.commands import (
    cache,
    convert,
    demo,
    export,
    features,
    fit,
    lt_soups,
    monosoup,
    predict,
    probe,
    report,
    soup,
    stats,
)
from longtail.commands import eval as eval_command
from longtail.commands import list as list_command
from longtail.errors import LongtailError

MODULES: dict[str, ModuleType] = {
    "list": list_command, "stats": stats, "features": features, "probe": probe, "eval": eval_command,
    "predict": predict, "report": report, "demo": demo, "fit": fit, "soup": soup, "monosoup": monosoup,
    "lt-soups": lt_soups, "export": export, "convert": convert, "cache": cache,
}
COMMANDS = (  # the commands `build_parser` adds, in the order `longtail --help` lists them
    "list",
    "stats",
    "features",
    "probe",
    "eval",
    "predict",
    "report",
    "demo",
    "fit",
    "soup",
    "monosoup",
    "lt-soups",
    "export",
    "convert",
    "cache",
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
        module = MODULES[name]
        cmd = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        # PAIRS_DEST: the positional list that takes KEY=VALUE pairs (default "overrides")
        cmd.set_defaults(_run=module.run, _pairs=getattr(module, "PAIRS_DEST", "overrides"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # KEY=VALUE pairs may come after options (`stats DATA --many 5 many=30`); argparse stops
    # filling a positional list at the first option, so collect the rest here.
    pairs = [a for a in unknown if "=" in a and not a.startswith("-")]
    rest = [a for a in unknown if a not in pairs]
    if rest or (pairs and not hasattr(args, args._pairs)):
        parser.error(f"unrecognized arguments: {' '.join(rest or pairs)}")
    if pairs:
        setattr(args, args._pairs, [*getattr(args, args._pairs), *pairs])
    with _one_line_warnings(args.command):
        return _run(args)


def _process_group_up() -> bool:
    """Whether this process is in a torch.distributed group (never imports torch itself)."""
    if "torch" not in sys.modules:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _run(args: argparse.Namespace) -> int:
    """Run the command; user mistakes become one line and exit status 2. A process group the
    command joined (torchrun: `fit`, `lt-soups` and `features` through accelerate) is left
    before returning: gloo aborts at exit ("terminate called without an active exception")
    when a group is never shut down."""
    joined = not _process_group_up()
    try:
        return _run_command(args)
    finally:
        if joined and _process_group_up():
            import torch.distributed as dist

            dist.destroy_process_group()


def _run_command(args: argparse.Namespace) -> int:
    try:
        return int(args._run(args) or 0)
    except LongtailError as err:
        return _error(args.command, str(err))
    except OSError as err:
        # Last resort for a user path the command could not read or write (a read-only or
        # missing folder, a file where a folder should be); the usual home of such a check
        # is before any work (`longtail.io.check_writable`). OSErrors without a path are not
        # about the user's input: they keep their traceback.
        if err.filename is None:
            raise
        return _error(args.command, f"{err.filename}: {err.strerror or type(err).__name__}")
    except KeyboardInterrupt:
        print(f"longtail {args.command}: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _one_line_warnings(command: str) -> Iterator[None]:
    """While a command runs, show warnings as 'longtail CMD: warning: ...' on one line, each
    distinct one once; the caller's warning settings are restored after (main() is also a library
    call, in tests and scripts)."""
    import warnings

    before = warnings.formatwarning
    with warnings.catch_warnings():
        warnings.formatwarning = lambda message, category, *rest, **kw: f"longtail {command}: warning: {message}\n"
        warnings.simplefilter("default", UserWarning)  # each distinct message once per place
        try:
            yield
        finally:
            warnings.formatwarning = before


def _error(command: str, message: str) -> int:
    """Print the error as exactly one line and return exit status 2: control characters and
    line separators inside a user-supplied value are shown escaped (a newline as \\n)."""
    one_line = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                       for ch in message.strip())
    print(f"longtail {command}: error: {one_line}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
