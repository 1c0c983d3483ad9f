"""The exercise checkers' time limit (issue 25): a learner's function that never returns is stopped and reported
with the exercise, the input it was running on, the limit and the usual cause; the limit leaves correct solutions
alone, and the checker puts back any alarm it borrowed. Each test uses a limit of a few tenths of a second."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import signal
import threading
import time
from pathlib import Path

import pytest

import gqa_lib.exercises as ex
from gqa_lib.exercises import checking

pytestmark = pytest.mark.usefixtures("single_thread")

LIMIT = 0.3  # seconds: far above any case's time (under 3 ms), far below the test's budget
SMALLEST_KV_HEAD_OF = "query_head=0, n_heads=1, n_kv_heads=1"


def kv_head_of(query_head, n_heads, n_kv_heads):
    group_size = 0
    while group_size * n_kv_heads < n_heads:  # the learner forgot `group_size += 1`: the condition never changes
        pass
    return query_head // group_size


def spin(*args):
    while True:
        pass


def _assert_stopped_message(message: str, exercise: ex.Exercise, label: str, limit: float = LIMIT):
    text = " ".join(message.split())  # the message is wrapped
    assert message.startswith(f"wrong: {exercise.title}\n"), message
    assert f"smallest failing input: {label}" in text
    assert f"still running after {limit:g} seconds on this input" in text
    assert "infinite loop" in text and "a `while` loop whose condition never changes" in text


def test_a_function_that_never_returns_is_stopped_within_the_limit_and_the_case_named():
    exercise = ex.EXERCISES["kv_head_of"]
    out = io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(out):
        exercise.check(kv_head_of, time_limit=LIMIT)
    took = time.monotonic() - start
    assert LIMIT <= took < LIMIT + 1.0, took
    _assert_stopped_message(out.getvalue(), exercise, SMALLEST_KV_HEAD_OF)
    while_line = kv_head_of.__code__.co_firstlineno + 2
    assert f"(it was at line {while_line} of kv_head_of)" in " ".join(out.getvalue().split())
    assert f"check_kv_head_of(kv_head_of, time_limit={120:g})" in out.getvalue()


def test_the_limit_comes_from_the_environment_and_stops_a_later_case(monkeypatch):
    def slow_on_big_inputs(q, k, v):
        while q.shape[0] > 1:  # right on batch 1, loops forever on the first case with batch 2
            pass
        return ex.ex04_gqa.reference_gqa(q, k, v)

    monkeypatch.setenv(checking.TIME_LIMIT_ENV, str(LIMIT))
    exercise = ex.EXERCISES["gqa"]
    result = exercise.evaluate(slow_on_big_inputs)
    first_batch_2 = next(c for c in exercise.cases() if c.args[0].shape[0] > 1)
    assert result.status == "wrong" and result.mistake is None
    _assert_stopped_message(result.message, exercise, first_batch_2.label)


def test_no_limit_when_it_is_off(monkeypatch):
    assert checking.time_limit_s() == checking.TIME_LIMIT_S
    monkeypatch.setenv(checking.TIME_LIMIT_ENV, "off")
    assert checking.time_limit_s() is None and checking.time_limit_s(0) is None and checking.time_limit_s(2) == 2
    monkeypatch.setenv(checking.TIME_LIMIT_ENV, "0")
    assert checking.time_limit_s() is None
    assert checking.call_with_time_limit(lambda a, b: a + b, (1, 2), None) == 3


def test_the_learners_except_exception_cannot_swallow_the_stop():
    def stubborn(q, k, v):
        while True:
            try:
                spin()
            except Exception:  # noqa: BLE001 - what a learner might write
                pass

    exercise = ex.EXERCISES["mqa_decode_ragged"]
    result = exercise.evaluate(lambda q, k, v, lengths: stubborn(q, k, v), time_limit=LIMIT)
    _assert_stopped_message(result.message, exercise, exercise.cases()[0].label)


def _solution(notebook: str, name: str):
    (path,) = (Path(__file__).resolve().parents[1] / "solutions").glob(f"nb{notebook}_*.py")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def test_every_reference_solution_takes_a_small_part_of_the_limit():
    """The limit's margin: the slowest case of any reference solution (about 3 ms) is far below TIME_LIMIT_S / 10."""
    worst = 0.0
    for notebook, exercises in ex.BY_NOTEBOOK.items():
        for exercise in exercises:
            solution = _solution(notebook, exercise.name)
            for case in exercise.cases():
                args = checking.clone(case.args)
                start = time.perf_counter()
                solution(*args)
                worst = max(worst, time.perf_counter() - start)
    assert worst < checking.TIME_LIMIT_S / 10, worst


def test_correct_and_raising_functions_are_unchanged_under_a_limit():
    assert ex.EXERCISES["gqa"].evaluate(ex.ex04_gqa.reference_gqa, time_limit=5).status == "correct"
    result = ex.EXERCISES["gqa"].evaluate(lambda q, k, v: q @ k, time_limit=5)
    assert "your function raised RuntimeError" in result.message


def test_an_alarm_set_before_is_put_back():
    fired = []

    def outer(signum, frame):
        fired.append(signum)

    before = signal.signal(signal.SIGALRM, outer)
    try:
        signal.setitimer(signal.ITIMER_REAL, 100.0)
        ex.EXERCISES["kv_head_of"].evaluate(kv_head_of, time_limit=LIMIT)
        assert signal.getsignal(signal.SIGALRM) is outer
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 98 < left <= 100
        signal.setitimer(signal.ITIMER_REAL, 0.05)  # an alarm due while the learner's function runs fires after it
        ex.EXERCISES["kv_head_of"].evaluate(kv_head_of, time_limit=LIMIT)
        time.sleep(0.05)
        assert fired == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def _learner_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("exercise checker")]


def test_outside_the_main_thread_a_worker_thread_is_stopped_too():
    """Where SIGALRM cannot be used (a thread other than the main one; Windows), the function runs in a daemon
    thread, and is stopped there by an exception raised in it."""
    found = {}

    def checker_thread():
        start = time.monotonic()
        found["result"] = ex.EXERCISES["kv_head_of"].evaluate(kv_head_of, time_limit=LIMIT)
        found["took"] = time.monotonic() - start

    thread = threading.Thread(target=checker_thread)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    _assert_stopped_message(found["result"].message, ex.EXERCISES["kv_head_of"], SMALLEST_KV_HEAD_OF)
    assert "may still be running" not in found["result"].message
    assert found["took"] < LIMIT + 1.0
    assert not _learner_threads()  # the learner's loop did not go on in the background


def test_the_thread_fallback_in_the_main_thread_keeps_results_and_errors(monkeypatch):
    monkeypatch.setattr(checking, "_uses_signal", lambda: False)  # as on Windows
    exercise = ex.EXERCISES["gqa"]
    assert exercise.evaluate(ex.ex04_gqa.reference_gqa, time_limit=5).status == "correct"
    result = exercise.evaluate(lambda q, k, v: q @ k, time_limit=5)
    assert "your function raised RuntimeError" in result.message
    result = exercise.evaluate(spin, time_limit=LIMIT)
    _assert_stopped_message(result.message, exercise, exercise.cases()[0].label)
    assert "(it was at line" in result.message
    assert not _learner_threads()
