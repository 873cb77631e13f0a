"""A dependency-free progress line: count, percentage, rate and ETA.

On a terminal the line is redrawn in place with a carriage return; elsewhere (log files, CI) a
full line is printed every `log_interval` seconds so the output stays readable. Both end with a
final line when `close()` is called.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


class Progress:
    def __init__(self, total: int, label: str = "", unit: str = "img", stream: TextIO | None = None,
                 log_interval: float = 15.0, redraw_interval: float = 0.2,
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
        self.last_shown = self.start

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.done / elapsed
        percent = 100.0 * self.done / self.total if self.total else 100.0
        remaining = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = _duration(remaining) if remaining == remaining else "--:--"
        prefix = f"{self.label} " if self.label else ""
        return (f"{prefix}{self.done}/{self.total} ({percent:5.1f}%) {rate:.1f} {self.unit}/s "
                f"elapsed {_duration(elapsed)} ETA {eta}")

    def update(self, count: int = 1) -> None:
        self.done += count
        now = self.clock()
        if now - self.last_shown >= self.interval:
            self.last_shown = now
            self._show(final=False)

    def close(self) -> None:
        self._show(final=True)

    def _show(self, final: bool) -> None:
        if self.interactive:
            self.stream.write("\r" + self.line().ljust(79) + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
