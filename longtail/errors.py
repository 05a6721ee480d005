"""User-facing errors: one line, naming the problem; the CLI prints them and exits non-zero."""

from __future__ import annotations


class LongtailError(Exception):
    """Base class for errors caused by the user's input or configuration (not bugs)."""

    def __init__(self, *args: object) -> None:
        # torch's DataLoader re-raises a worker's error as `type(err)(text)`, the text being
        # "Caught X in DataLoader worker process N.\nOriginal Traceback ...\nmodule.X: message":
        # keep the one-line message (issue 22 item 7: a corrupt image decoded in a worker)
        if len(args) == 1 and isinstance(args[0], str) and "\nOriginal Traceback" in args[0]:
            last = args[0].rstrip().splitlines()[-1]
            args = (last.split(": ", 1)[1] if ": " in last else last,)
        super().__init__(*args)


class DataError(LongtailError, ValueError):  # ValueError: what Python / scikit-learn callers catch
    """Bad data: missing/corrupt file, wrong shape, NaN features, label out of range, empty class."""


class ConfigError(LongtailError, ValueError):
    """Bad configuration: unknown key, invalid value, incompatible options."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""
