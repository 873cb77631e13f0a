"""A dependency-free progress line for long work (conversion, evaluation, drawing)."""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, TextIO


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


class Progress:
    """A progress line on stderr: count (of total when known), rate and ETA.

    Redrawn in place on a terminal; elsewhere a full line every `log_interval` seconds.
    """

    def __init__(self, total: int | None, label: str = "", unit: str = "img", stream: TextIO | None = None,
                 log_interval: float = 10.0, redraw_interval: float = 0.2,
                 clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.label = label
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = redraw_interval if self.interactive else log_interval
        self.done = 0
        self.start = clock()
        self.shown = self.start

    @property
    def elapsed(self) -> float:
        return max(self.clock() - self.start, 1e-9)

    def line(self) -> str:
        rate = self.done / self.elapsed
        prefix = f"{self.label} " if self.label else ""
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else math.nan
            eta = "--:--" if math.isnan(left) else format_duration(left)
            count = f"{self.done}/{self.total} ({100.0 * self.done / self.total:5.1f}%)"
            return f"{prefix}{count} {rate:.1f} {self.unit}/s elapsed {format_duration(self.elapsed)} ETA {eta}"
        return f"{prefix}{self.done} {rate:.1f} {self.unit}/s elapsed {format_duration(self.elapsed)}"

    def update(self, count: int = 1) -> None:
        self.done += count
        now = self.clock()
        if now - self.shown >= self.interval:
            self.shown = now
            self._show(final=False)

    def close(self) -> None:
        self._show(final=True)

    def _show(self, final: bool) -> None:
        if self.interactive:
            self.stream.write("\r" + self.line().ljust(79) + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
