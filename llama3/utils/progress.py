"""A small byte-count progress bar (size, speed, ETA) written to stderr.

On a terminal the bar is redrawn in place at most ten times a second; when the stream is not a
terminal (a log file, a pipe, CI) nothing is drawn while working and one summary line is written when
the work completes, so logs stay readable. Used by `llama3 download` and when loading a large
checkpoint from disk. It knows nothing about what the bytes are.
"""

from __future__ import annotations

import shutil
import sys
import time
from types import TracebackType
from typing import TextIO

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; binary units so sizes match what `ls -lh` and `du -h` show."""
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """75 -> '1:15', 3725 -> '1:02:05'."""
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Progress of a byte count; use as a context manager.

    Args:
        total: bytes expected in all (`None` when unknown: no bar, percentage or ETA).
        desc: a short label shown first (a file name).
        enabled: False draws and writes nothing (`--quiet`).
        initial: bytes already done before this run (a resumed download); they count towards the
            bar but not towards the speed.
        stream: where to write (default: `sys.stderr` at construction time).
    """

    #: seconds between two redraws on a terminal
    min_interval = 0.1

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        enabled: bool = True,
        *,
        initial: int = 0,
        stream: TextIO | None = None,
    ) -> None:
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self.initial = initial
        self.n = initial
        self.stream = stream if stream is not None else sys.stderr
        self.tty = enabled and _isatty(self.stream)
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._closed = False

    def __enter__(self) -> Progress:
        if self.tty:
            self._draw()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(ok=exc_type is None)

    def update(self, n: int) -> None:
        """Add `n` bytes done; redraws on a terminal when enough time has passed."""
        self.n += n
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw >= self.min_interval:
                self._draw(now)

    def close(self, ok: bool = True) -> None:
        """Finish: the final bar and a newline on a terminal, a summary line elsewhere if `ok`."""
        if self._closed or not self.enabled:
            self._closed = True
            return
        self._closed = True
        if self.tty:
            self._draw()
            self.stream.write("\n")
        elif ok:
            self.stream.write(self.summary() + "\n")
        self.stream.flush()

    @property
    def rate(self) -> float:
        """Bytes per second over this run (resumed bytes excluded)."""
        elapsed = time.monotonic() - self._start
        return (self.n - self.initial) / elapsed if elapsed > 0 else 0.0

    def summary(self) -> str:
        """'desc  1.5 GiB in 0:31 (48.2 MiB/s)' — the one line written when not on a terminal."""
        elapsed = time.monotonic() - self._start
        done = self.n - self.initial
        resumed = f", {format_bytes(self.initial)} already there" if self.initial else ""
        line = f"{format_bytes(done)} in {format_duration(elapsed)} ({format_bytes(self.rate)}/s{resumed})"
        return f"{self.desc}  {line}" if self.desc else line

    def render(self, width: int) -> str:
        """The bar line, fitted to `width` columns: desc, bar, percent, sizes, speed, ETA."""
        rate = self.rate
        speed = f"{format_bytes(rate)}/s"
        if self.total:
            frac = min(self.n / self.total, 1.0)
            left = (self.total - self.n) / rate if rate > 0 else None
            eta = f"ETA {format_duration(left)}" if left is not None and frac < 1 else ""
            if frac >= 1:
                eta = format_duration(time.monotonic() - self._start)
            stats = (
                f"{frac * 100:3.0f}% {format_bytes(self.n)}/{format_bytes(self.total)} "
                f"{speed} {eta}"
            ).rstrip()
        else:
            frac = None
            stats = f"{format_bytes(self.n)} {speed}"
        desc = self.desc
        room = width - len(stats) - 2
        if frac is not None and room - len(desc) >= 12:
            # Size the bar as if the numbers took their widest usual form, so it does not jitter.
            bar_w = min(width - max(len(stats), 44) - len(desc) - 4, 40)
            bar_w = max(bar_w, min(room - len(desc) - 2, 10))
            filled = int(frac * bar_w)
            bar = "[" + "#" * filled + "." * (bar_w - filled) + "]"
            line = f"{desc} {bar} {stats}" if desc else f"{bar} {stats}"
        else:
            if len(desc) > max(
                room, 0
            ):  # very narrow terminal: shorten the label, keep the numbers
                desc = desc[: max(room - 1, 0)] + "…" if room > 1 else ""
            line = f"{desc} {stats}" if desc else stats
        return line[:width]

    def _draw(self, now: float | None = None) -> None:
        self._last_draw = now if now is not None else time.monotonic()
        width = shutil.get_terminal_size((80, 24)).columns - 1
        # \r back to column 0, then erase what a longer previous line left behind.
        self.stream.write("\r" + self.render(width) + "\033[K")
        self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or file-like without a terminal
        return False
