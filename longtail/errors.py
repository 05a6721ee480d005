"""User-facing errors: one line, naming the problem; the CLI prints them and exits non-zero."""

from __future__ import annotations


class LongtailError(Exception):
    """Base class for errors caused by the user's input or configuration (not bugs)."""


class DataError(LongtailError, ValueError):  # ValueError: what Python / scikit-learn callers catch
    """Bad data: missing/corrupt file, wrong shape, NaN features, label out of range, empty class."""


class ConfigError(LongtailError, ValueError):
    """Bad configuration: unknown key, invalid value, incompatible options."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""
