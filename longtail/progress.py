"""Progress of long loops (feature extraction, training, prediction), visible on a terminal and
in a log.

On a terminal it is a tqdm bar. When stderr is not a terminal (piped to a file, a batch job),
tqdm would only redraw one line with carriage returns, which a log shows as nothing until the
loop ends; there a plain line is written every `interval` seconds instead:

    features (tiny_clip): 1,024/4,000 images, 85.3 images/s, eta 35 s

`enabled=False` silences both. Every call site uses `progress_bar()`, so the behaviour is the same
for every long loop.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

LOG_INTERVAL = 30.0  # seconds between plain progress lines when stderr is not a terminal


def _plural(unit: str) -> str:
    """'images' for a count of 'image' (units already plural, or 'it', stay as they are)."""
    if unit.endswith("s") or unit == "it":
        return unit
    return unit + ("es" if unit.endswith(("ch", "sh", "x")) else "s")


def _duration(seconds: float) -> str:
    """'35 s', '4 min 05 s', '2 h 03 min': short, for eta and elapsed time."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class LineProgress:
    """tqdm's small interface (update, set_postfix, close, iteration) printing one plain line
    every `interval` seconds, and a closing line if any was printed (short loops stay quiet)."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        interval: float = LOG_INTERVAL,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self._start_n = initial
        self.interval, self.stream, self.clock = interval, stream, clock
        self.postfix = ""
        self.lines = 0
        self._start = self._last = clock()

    def _rate(self, now: float) -> float:
        return (self.n - self._start_n) / max(now - self._start, 1e-9)

    def line(self, now: float | None = None) -> str:
        """The progress line as it is now: 'desc: n/total unit, rate unit/s, eta t, postfix'."""
        now = self.clock() if now is None else now
        rate = self._rate(now)
        units = _plural(self.unit)
        parts = [f"{self.n:,}/{self.total:,} {units}" if self.total else f"{self.n:,} {units}"]
        parts.append(f"{rate:.3g} {self.unit}/s" if rate else f"0 {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"eta {_duration(max(self.total - self.n, 0) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: {', '.join(parts)}"

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(text + "\n")
        stream.flush()
        self.lines += 1

    def update(self, n: int = 1) -> None:
        """Count `n` more units; print a line if `interval` seconds passed since the last one."""
        self.n += n
        now = self.clock()
        if now - self._last >= self.interval:
            self._last = now
            self._write(self.line(now))

    def set_postfix(self, **values: Any) -> None:
        """Extra `key=value` pairs shown at the end of the next line (tqdm's set_postfix)."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        """Print the closing line ('done, N ... in t', or 'stopped at n/total ...' for a loop that
        ended before its total: an interrupt), with the last postfix, if the loop printed any
        progress line."""
        if self.lines:
            now = self.clock()
            units, took = _plural(self.unit), _duration(now - self._start)
            last = f", {self.postfix}" if self.postfix else ""  # e.g. the training loss read last
            if self.total and self.n < self.total:  # issue 22 item 18: an interrupt is not 'done'
                self._write(f"{self.desc}: stopped at {self.n:,}/{self.total:,} {units} after {took}{last}")
            else:
                self._write(f"{self.desc}: done, {self.n:,} {units} in {took}{last}")
            self.lines = 0

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LineProgress was created without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:  # also when the loop stops early
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Silent(LineProgress):
    """progress=False: counts, never prints."""

    def _write(self, text: str) -> None:
        pass


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
    leave: bool = True,
    interval: float | None = None,
    stream: TextIO | None = None,
) -> Any:
    """A progress counter for a loop: a tqdm bar on a terminal, a plain line every `interval`
    seconds otherwise, nothing when `enabled` is False. Use like tqdm: wrap an iterable, or call
    `update(n)` / `set_postfix(...)` / `close()`. `interval` defaults to LOG_INTERVAL."""
    stream = stream or sys.stderr
    interval = LOG_INTERVAL if interval is None else interval
    if not enabled:
        return _Silent(iterable, total=total, desc=desc, unit=unit, initial=initial, stream=stream)
    if getattr(stream, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=stream)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, interval=interval,
                        stream=stream)
