"""The fixed and the moving image's work side by side: the same results as one after the other, errors
in order, nothing left running, one after the other for an image registered to itself (one SimpleITK
image must not be read from two threads), and one core only when a cohort gives a pair one thread."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

import pytest
import SimpleITK as sitk

from OneClickRegistrationLib import side_by_side as module
from OneClickRegistrationLib.attempts import score_on
from OneClickRegistrationLib.options import ImageInfo
from OneClickRegistrationLib.pipeline import _recognise
from OneClickRegistrationLib.preparation import initial_alignment, prepare_pair
from OneClickRegistrationLib.side_by_side import may_use_two_cores, side_by_side


@pytest.fixture
def itk_threads() -> Iterator[None]:
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    yield
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _digest(image: sitk.Image) -> str:
    return hashlib.md5(sitk.GetArrayViewFromImage(image).tobytes()).hexdigest()


def _everything_side_by_side_touches(pair) -> dict[str, object]:
    fixed_ev, moving_ev, preset = _recognise(pair.fixed, pair.moving, ImageInfo(), ImageInfo(), "rigid")
    prepared = prepare_pair(pair.fixed, pair.moving, preset)
    start = initial_alignment(prepared, preset.initialization)
    return {
        "evidence": (repr(fixed_ev), repr(moving_ev)),
        "images": tuple(_digest(image) for image in (prepared.fixed, prepared.moving, prepared.fixed_head,
                                                     prepared.moving_head)),
        "start": start.GetParameters() + start.GetFixedParameters(),
        "score": score_on(prepared, pair.truth, preset.score_metric).value,
    }


def test_two_cores_give_exactly_what_one_core_gives(t1_ct_pair, itk_threads, monkeypatch):
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    assert may_use_two_cores()
    together = _everything_side_by_side_touches(t1_ct_pair)
    # One after the other, with ITK's own threads unchanged: only the side-by-side work differs.
    monkeypatch.setattr(module, "may_use_two_cores", lambda: False)
    assert _everything_side_by_side_touches(t1_ct_pair) == together


def test_the_two_pieces_run_at_the_same_time_when_two_cores_may_be_used(itk_threads):
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    both_started = threading.Barrier(2, timeout=5)  # raises BrokenBarrierError if one waits for the other

    def piece(name: str) -> str:
        both_started.wait()
        return name

    assert side_by_side(lambda: piece("fixed"), lambda: piece("moving")) == ("fixed", "moving")


def test_one_thread_for_a_pair_runs_both_pieces_in_the_calling_thread(itk_threads):
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    caller = threading.get_ident()
    assert side_by_side(threading.get_ident, threading.get_ident) == (caller, caller)


def test_the_first_error_is_raised_and_the_second_piece_has_ended_by_then(itk_threads):
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    ended = threading.Event()

    def slow_second() -> None:
        time.sleep(0.3)
        ended.set()
        raise RuntimeError("second")

    def failing_first() -> None:
        raise ValueError("first")

    with pytest.raises(ValueError, match="first"):
        side_by_side(failing_first, slow_second)
    assert ended.is_set()  # nothing keeps running behind the error
    with pytest.raises(RuntimeError, match="second"):
        side_by_side(lambda: "fine", slow_second)


def test_one_image_object_on_both_sides_is_read_by_one_thread(t1_ct_pair, itk_threads):
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    image, other = t1_ct_pair.fixed, t1_ct_pair.moving
    caller = threading.get_ident()
    same = side_by_side(threading.get_ident, threading.get_ident, images=((image, None), (image,)))
    assert same == (caller, caller)
    apart = side_by_side(threading.get_ident, threading.get_ident, images=((image, None), (other, None)))
    assert apart[0] == caller and apart[1] != caller


def test_an_image_registered_to_itself_gets_the_same_preparation_as_two_copies(t1_ct_pair, itk_threads):
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    image = t1_ct_pair.fixed
    _, _, preset = _recognise(image, image, ImageInfo(), ImageInfo(), "rigid")
    itself = prepare_pair(image, image, preset)
    copies = prepare_pair(image, sitk.Image(image), preset)  # a second wrapper: side by side
    assert [_digest(i) for i in (itself.fixed, itself.moving, itself.fixed_head, itself.moving_head)] == \
        [_digest(i) for i in (copies.fixed, copies.moving, copies.fixed_head, copies.moving_head)]
