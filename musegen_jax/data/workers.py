"""A function over items in spawned worker processes, results in order."""

from __future__ import annotations

import multiprocessing
from typing import Any, Callable, Iterator, Sequence


def map_in_workers(fn: Callable[[Any], Any], items: Sequence[Any],
                   num_workers: int) -> Iterator[Any]:
  """`fn` over `items` in order; in worker processes when num_workers > 1.

  Workers are spawned, not forked: forking a process that has imported JAX
  can deadlock. `fn` must be a module-level function (it is pickled).
  """
  if num_workers <= 1 or len(items) <= 1:
    yield from map(fn, items)
    return
  context = multiprocessing.get_context("spawn")
  chunksize = max(1, min(32, len(items) // (4 * num_workers)))
  with context.Pool(min(num_workers, len(items))) as pool:
    yield from pool.imap(fn, items, chunksize=chunksize)
