"""Progress a person can read: a tqdm bar when stderr is a terminal; elsewhere (CI, a cluster
pod, ``> log 2>&1``) one plain line every few percent, since a bar's carriage-return updates
turn a log into one long line per loop."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Iterable, Iterator

from tqdm.auto import tqdm


def on_terminal() -> bool:
    """Whether stderr, where the bars go, is a terminal."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class PlainProgress:
    """tqdm's loop interface (iterate, ``update``, ``set_postfix``, ``close``) writing one line
    to stderr each time another ``every`` share of ``total`` is done, and at the end."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 every: float = 0.1, unit: str = "it"):
        self.iterable, self.desc, self.every, self.unit = iterable, desc, every, unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.postfix, self.started, self.next_share, self.written_at = 0, {}, time.perf_counter(), every, 0

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total and self.n < self.total and self.n / self.total >= self.next_share - 1e-9:
            self.line()
            self.next_share = (math.floor(self.n / self.total / self.every + 1e-9) + 1) * self.every

    def set_postfix(self, **figures: Any) -> None:
        self.postfix = figures

    def close(self) -> None:
        if self.n != self.written_at:
            self.line()

    def line(self) -> None:
        self.written_at = self.n
        seconds = time.perf_counter() - self.started
        share = f"{self.n / self.total:.0%} {self.n}/{self.total}" if self.total else f"{self.n}"
        rate = f"{self.n / seconds:.2f} {self.unit}/s" if seconds > 0 else ""
        figures = "".join(f" {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {share} [{seconds:.0f}s, {rate}]{figures}", file=sys.stderr, flush=True)


def progress_bar(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
                 disable: bool = False, leave: bool = True, every: float = 0.1, unit: str = "it"):
    """A tqdm bar on a terminal, else a PlainProgress (a line per ``every`` share); nothing when ``disable``."""
    if disable or on_terminal():
        return tqdm(iterable, desc=desc, total=total, disable=disable, leave=leave, unit=unit)
    return PlainProgress(iterable, total, desc, every, unit)


def write_line(text: str) -> None:
    """One line to stdout beside the bars: through tqdm on a terminal, so that a bar is not torn."""
    if on_terminal():
        tqdm.write(text)
    else:
        print(text, flush=True)
