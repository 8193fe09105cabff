"""Process settings for capture's throughput."""

from __future__ import annotations

import gc

__all__ = ["YOUNG_OBJECTS_PER_COLLECTION", "collect_garbage_seldom"]

YOUNG_OBJECTS_PER_COLLECTION = 50_000
"""Container objects allocated between two passes of the cyclic garbage collector (Python's default: 700)."""


def collect_garbage_seldom() -> None:
    """Run the cyclic garbage collector's young-generation pass every
    :data:`YOUNG_OBJECTS_PER_COLLECTION` allocations instead of every 700.

    Capture allocates a few dicts and tuples per event and reference counting frees nearly all of them; a
    pass every 700 allocations traversed every row of the page in flight, about a tenth of trigger mode's
    CPU (perf, 400,000-event backlog). Cyclic garbage is still collected, a little later.
    """
    young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(YOUNG_OBJECTS_PER_COLLECTION, young), older, oldest)
