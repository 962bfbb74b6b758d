"""A dependency-free progress bar on stderr: redrawn in place on a terminal, a line per ~10 %
otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str, stream=sys.stderr, enabled: bool = True):
        self.total, self.desc, self.stream, self.enabled = max(total, 1), desc, stream, enabled
        self.done, self.start, self.last_decile = 0, time.perf_counter(), -1
        self.tty = enabled and getattr(stream, "isatty", lambda: False)()

    def update(self, n: int = 1, **fields) -> None:
        if not self.enabled:
            return
        self.done += n
        frac = min(self.done / self.total, 1.0)
        elapsed = time.perf_counter() - self.start
        info = " ".join(f"{k} {v}" for k, v in fields.items())
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        bar = "#" * int(24 * frac)
        line = f"{self.desc} [{bar:<24}] {self.done}/{self.total} {info} {elapsed:.0f}s<{eta:.0f}s"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if self.done >= self.total else ""))
            self.stream.flush()
        elif int(frac * 10) > self.last_decile:
            self.last_decile = int(frac * 10)
            print(line, file=self.stream, flush=True)
