"""Two independent pieces of work at once: the fixed image's and the moving image's.

Much of what is not the engine is done once per image (recognising its contrast, masking its
head, making its float copy), and the two images do not depend on each other. ITK and numpy
release Python's lock while they work, so two threads use two cores where one filter alone
(connected components, hole filling, a quantile) uses one. Results do not depend on the order:
each piece writes only its own result.

The pieces must not share a SimpleITK image: taking a numpy view of an image
(``GetArrayViewFromImage``) first makes its buffer unique, which copies it when a filter in the
other thread holds it too, and the old buffer is freed under views already taken (a crash, seen
with two threads scoring the same moving image). The same image object on both sides (an image
registered to itself) therefore runs one after the other.

The work also runs one after the other when this process may use a single core (ITK's global
thread count is 1: a cohort task given one thread per pair), so a cluster's workers are not
oversubscribed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import SimpleITK as sitk

First = TypeVar("First")
Second = TypeVar("Second")


def may_use_two_cores() -> bool:
    """Whether this process may keep two cores busy (ITK's global thread count, which a cohort sets per pair)."""
    return sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() > 1


def side_by_side(first: Callable[[], First], second: Callable[[], Second], *,
                 images: tuple[Sequence[sitk.Image | None], Sequence[sitk.Image | None]] = ((), ())
                 ) -> tuple[First, Second]:
    """``(first(), second())``, computed at the same time when two cores may be used.

    ``images`` names the SimpleITK images each piece reads (None entries are ignored): when one
    object appears on both sides the pieces run one after the other (module notes). Pieces that
    read only numpy arrays name none. Both always finish before this returns (no work is left
    running behind an error); when both fail, ``first``'s error is raised, as it would be one after
    the other.
    """
    shared = any(mine is theirs for mine in images[0] if mine is not None for theirs in images[1])
    if shared or not may_use_two_cores():
        return first(), second()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="oneclick-second") as pool:
        later = pool.submit(second)
        try:
            result = first()
        except BaseException:
            later.exception()  # wait for it: its temporaries and threads end before the error travels on
            raise
        return result, later.result()
