"""Two independent pieces of work at once: the fixed image's and the moving image's.

Much of what is not the engine is done once per image (recognising its contrast, masking its
head, making its float copy), and the two images do not depend on each other. ITK and numpy
release Python's lock while they work, so two threads use two cores where one filter alone
(connected components, hole filling, a quantile) uses one. Results do not depend on the order:
each piece writes only its own result.

The work runs one after the other when this process may use a single core (ITK's global thread
count is 1: a cohort task given one thread per pair), so a cluster's workers are not oversubscribed.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import SimpleITK as sitk

First = TypeVar("First")
Second = TypeVar("Second")


def may_use_two_cores() -> bool:
    """Whether this process may keep two cores busy (ITK's global thread count, which a cohort sets per pair)."""
    return sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() > 1


def side_by_side(first: Callable[[], First], second: Callable[[], Second]) -> tuple[First, Second]:
    """``(first(), second())``, computed at the same time when two cores may be used.

    Both always finish before this returns (no work is left running behind an error); when both
    fail, ``first``'s error is raised, as it would be one after the other.
    """
    if not may_use_two_cores():
        return first(), second()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="oneclick-second") as pool:
        later = pool.submit(second)
        try:
            result = first()
        except BaseException:
            later.exception()  # wait for it: its temporaries and threads end before the error travels on
            raise
        return result, later.result()
