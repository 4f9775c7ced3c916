"""One progress bar over a cohort (tqdm on stderr): cases done, cases per minute and the time left."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """A tqdm bar over ``total`` cases, ``done`` of them already complete (not counted in the rate).

    Shown on a terminal only (``disable=None``); ``failed`` is shown beside the rate.
    """

    def __init__(self, total: int, done: int = 0, desc: str = "cases") -> None:
        from tqdm import tqdm

        class Bar(tqdm):
            # no monitor thread: a thread left running in the caller's process is inherited, mid-lock, by
            # any process it forks later (a forked export child then hung at exit; seen in the test suite)
            monitor_interval = 0

        self.bar = Bar(
            total=total,
            initial=done,
            desc=desc,
            unit="case",
            file=sys.stderr,
            disable=None,
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
        )
        self.start = time.perf_counter()
        self.new = 0
        self.failed = 0

    def update(self, done: int, failed: int = 0) -> None:
        """``done`` more cases finished (``failed`` of them failed)."""
        self.new += done
        self.failed += failed
        minutes = (time.perf_counter() - self.start) / 60
        rate = self.new / minutes if minutes > 0 else 0.0
        self.bar.set_postfix_str(f"{rate:.1f} cases/min, {self.failed} failed", refresh=False)
        self.bar.update(done)

    def close(self) -> None:
        self.bar.close()
