"""Batches of cases with a memory guard: a batch that fails is split in halves and retried.

A batch that runs out of memory (``torch.cuda.OutOfMemoryError``, or a ``RuntimeError``
saying "out of memory", as CPU allocators do) is split and each half retried, down to
single cases; any other error is split the same way, so that the failing case ends up
alone and is recorded as failed while the rest of its batch completes. Cases of one
classifier input shape are explained in one call inside a batch
(:func:`medhdm.pipeline.explain_images`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from ..explain.base import is_out_of_memory

__all__ = ["chunks", "is_out_of_memory", "run_split"]

T = TypeVar("T")
R = TypeVar("R")


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    """``items`` in consecutive batches of at most ``size`` (their order kept)."""
    if size < 1:
        raise ValueError(f"size: expected at least 1, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def run_split(
    fn: Callable[[list[T]], list[R]], items: list[T], log: Callable[[str], None] | None = None
) -> list[tuple[T, R | None, BaseException | None]]:
    """``fn(items)`` (one result per item) with failing batches split in halves and retried.

    Returns per item ``(item, result, None)`` or, for an item that fails alone, ``(item, None, error)``.
    """
    try:
        results = fn(items)
    except Exception as err:  # noqa: BLE001 (every error is either split or recorded)
        if len(items) == 1:
            return [(items[0], None, err)]
        if is_out_of_memory(err) and torch.cuda.is_available():
            torch.cuda.empty_cache()
        if log:
            kind = "out of memory" if is_out_of_memory(err) else type(err).__name__
            log(f"a batch of {len(items)} cases failed ({kind}); retrying it in halves")
        half = len(items) // 2
        return run_split(fn, items[:half], log) + run_split(fn, items[half:], log)
    return list(zip(items, results, [None] * len(items)))
