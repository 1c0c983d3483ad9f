"""What every exercise checker shares: run the learner's function on chosen inputs, compare, explain.

An :class:`Exercise` holds a reference implementation, a list of :class:`Case` inputs (smallest first)
and the known mistakes for it (from :mod:`gqa_lib.exercises.museum`). ``Exercise.evaluate(fn)`` never
raises on the learner's behalf: whatever ``fn`` does (raise, return None, return the wrong shape or
wrong numbers) becomes a :class:`Result` with one of three statuses:

- ``"not yet"``: ``fn`` raised ``NotImplementedError`` or returned None (an unfinished skeleton);
- ``"wrong"``: the smallest input on which ``fn`` disagrees with the reference, the expected and the
  received values and, when a known mistake reproduces what ``fn`` returns on every case, that mistake's
  name and explanation (see :meth:`Exercise.recognise` for the rule);
- ``"correct"``: every case agreed; the message lists what was checked.

``Exercise.check(fn)`` prints the message; that is the one call a notebook cell makes. The case builders
at the end (:func:`seeded_cases`, :func:`attention_case`, :func:`kv_projection_case`) make the inputs that
several exercises share.

Each call of the learner's function runs under a time limit (:data:`TIME_LIMIT_S`, see
:func:`call_with_time_limit`): a function that never returns is stopped and reported as "wrong" with the
input it was running on, instead of hanging the notebook.

Why one module of about 680 lines: the case, the comparison, the messages, the time limit and the shared
case builders make one checker that every exercise runs; each exercise module holds only its reference,
its cases and its title.
"""

from __future__ import annotations

import copy
import ctypes
import math
import numbers
import os
import re
import signal
import textwrap
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# Tolerances for comparing floating-point results. A different but valid formulation (einsum instead
# of matmul, a loop over heads, SDPA instead of softmax) reorders sums: about 1e-6 relative in float32,
# a few units of bf16's 8-bit mantissa (2**-8 = 0.4 %) in bfloat16. Known mistakes differ by O(1).
TOLERANCES = {torch.float32: (1e-4, 1e-4), torch.float64: (1e-8, 1e-8),
              torch.bfloat16: (5e-2, 2e-2), torch.float16: (1e-2, 1e-2)}
# An int answer (a byte count) given as a float passes when it is this close, relative: float64 arithmetic on
# counts below 2**53 rounds by a few parts in 1e16 per operation, and a real slip (half a byte at 37,748,736 is
# 1.3e-8) is far above it.
INT_AS_FLOAT_RTOL = 1e-12


@dataclass
class Case:
    """One input to an exercise: positional ``args``, a ``label`` a learner can read, and its ``size``
    (cases run smallest first, so the first failure is the smallest failing input). ``info`` holds
    facts about the case that mistake explanations may quote (e.g. ``n_heads``). ``tol`` widens the tolerance where the
    reference itself is only that accurate (float32 RoPE angles at position 100,000)."""

    label: str
    args: tuple
    size: int = 0
    info: dict = field(default_factory=dict)
    tol: tuple[float, float] | None = None  # (atol, rtol) for this case instead of TOLERANCES


@dataclass
class Mistake:
    """A known wrong implementation and what to tell a learner whose result equals its result.

    ``explain`` is a string, or a function ``(case) -> str`` for a message that names the case's numbers.
    """

    name: str
    fn: Callable
    explain: str | Callable[[Case], str]

    def message(self, case: Case) -> str:
        return self.explain(case) if callable(self.explain) else self.explain


@dataclass
class Result:
    """What a check found. ``status`` is 'correct', 'wrong' or 'not yet'; ``mistake`` names a recognised
    known mistake (or None); ``message`` is what ``check`` prints."""

    status: str
    message: str
    mistake: str | None = None

    def __str__(self) -> str:
        return self.message


class _NotYet(Exception):
    pass


# ------------------------------------------------------------------------------------------- the time limit
# Seconds one call of the learner's function may take on one case. The references take at most 3 ms on the
# largest case (measured on a busy 2-core machine, one torch thread; the byte counts well under 1 ms), and every
# case is small (at most 65,536 multiply-adds of scores: decode_attention, 2 x 32 heads x 64 keys x 16). The
# slowest correct solution we could think of, a Python loop over every layer, token and batch entry of the
# largest cache_bytes case (126 layers x 131,072 tokens x batch 8 = 132 million steps), took 10.7 s on that
# machine: 30 s leaves it 3x for a slow laptop, while a learner with an infinite loop waits half a minute, not
# forever.
TIME_LIMIT_S = 30.0
# Environment variable that overrides TIME_LIMIT_S (seconds; 0 or "off" for no limit).
TIME_LIMIT_ENV = "GQA_EXERCISE_TIME_LIMIT"


class _TimeLimit(BaseException):
    """Raised inside the learner's function when its time is up. A BaseException, so that the learner's own
    ``except Exception:`` cannot swallow it."""

    stopped = True  # False when the function could not be interrupted (see call_with_time_limit)


def time_limit_s(limit: float | None = None) -> float | None:
    """The limit to use: ``limit`` if given, else ``$GQA_EXERCISE_TIME_LIMIT``, else :data:`TIME_LIMIT_S`; None
    (no limit) for 0, a negative number or "off"."""
    if limit is None:
        env = os.environ.get(TIME_LIMIT_ENV, "").strip().lower()
        try:
            limit = 0.0 if env in ("off", "none", "no") else float(env) if env else TIME_LIMIT_S
        except ValueError:
            limit = TIME_LIMIT_S
    return limit if limit > 0 else None


def _uses_signal() -> bool:
    return hasattr(signal, "SIGALRM") and hasattr(signal, "setitimer") and threading.current_thread() is \
        threading.main_thread()


def call_with_time_limit(fn: Callable, args: tuple, limit: float | None) -> Any:
    """``fn(*args)``, stopped with :class:`_TimeLimit` if it runs longer than ``limit`` seconds (None: no limit).

    How it is stopped:

    - in the main thread of a Unix process (Linux, macOS; a Jupyter kernel runs cells there): ``SIGALRM`` from
      ``signal.setitimer``; its handler raises inside ``fn``, which stops at its next Python line, and the alarm
      repeats every second after that in case ``fn`` caught the first. A SIGALRM handler and timer that were set
      before (pytest-timeout's, say) are put back afterwards; an earlier alarm of theirs fires when ``fn`` ends.
    - elsewhere (Windows, which has no SIGALRM, or a thread other than the main one, where a signal handler
      cannot be set): ``fn`` runs in a daemon thread that the caller joins with a timeout; when the time is up
      the caller raises :class:`_TimeLimit` inside that thread (``PyThreadState_SetAsyncExc``), which stops a
      Python loop the same way. Only code stuck in one long C call cannot be stopped: it is left running as a
      daemon thread and the exception's ``stopped`` is False.

    Exceptions that ``fn`` raises come back unchanged, with their traceback, either way.
    """
    if limit is None:
        return fn(*args)
    if _uses_signal():
        return _call_with_alarm(fn, args, limit)
    return _call_in_thread(fn, args, limit)


def _call_with_alarm(fn: Callable, args: tuple, limit: float) -> Any:
    def on_alarm(signum, frame):
        raise _TimeLimit()

    start = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, limit, 1.0)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler if old_handler is not None else signal.SIG_DFL)
        if old_delay > 0:  # someone else's alarm was pending: set it again for what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - start), 1e-3), old_interval)


def _raise_in_thread(thread: threading.Thread, exc_type: type[BaseException]) -> None:
    try:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc_type))
    except (AttributeError, TypeError, ValueError):  # not CPython: the thread is left to finish on its own
        pass


def _call_in_thread(fn: Callable, args: tuple, limit: float) -> Any:
    box: dict[str, Any] = {}
    grad = torch.is_grad_enabled()  # torch's grad mode is per thread: the worker gets the caller's

    def work():
        try:
            with torch.set_grad_enabled(grad):
                box["out"] = fn(*args)
        except BaseException as e:  # handed to the caller, which raises it
            box["err"] = e

    worker = threading.Thread(target=work, name="exercise checker: learner's function", daemon=True)
    deadline = time.monotonic() + limit
    worker.start()
    try:
        while worker.is_alive() and time.monotonic() < deadline:
            worker.join(min(0.05, max(deadline - time.monotonic(), 0)))  # short joins: Ctrl-C gets through
    except BaseException:  # KeyboardInterrupt (the notebook's stop button): stop the learner's code too
        _raise_in_thread(worker, KeyboardInterrupt)
        raise
    if worker.is_alive():
        _raise_in_thread(worker, _TimeLimit)
        worker.join(2.0)
        if not isinstance(box.get("err"), _TimeLimit):
            stuck = _TimeLimit()
            stuck.stopped = not worker.is_alive()
            raise stuck
    if "err" in box:
        raise box["err"]
    return box["out"]


def _time_limit_message(name: str, title: str, case: Case, limit: float, err: _TimeLimit, fn: Callable) -> str:
    where = _where_in_learner_code(err, fn).replace(" (line", " (it was at line", 1)
    fn_name = getattr(fn, "__name__", "")
    fn_name = fn_name if fn_name.isidentifier() else "your_function"
    after = ("" if err.stopped else " It may still be running in the background: if the notebook becomes slow, "
             "restart the kernel.")
    lines = [f"wrong: {title}", f"  smallest failing input: {case.label}",
             f"  your function was still running after {limit:g} second{'s' * (limit != 1)} on this input{where}, so "
             f"the checker stopped it.{after}",
             "A correct solution takes milliseconds here. The usual cause is an infinite loop: a `while` loop whose "
             "condition never changes (a counter that is never increased, or increased on a path the loop never "
             "takes), or a loop that appends to the list it runs over. A loop over every token of a long input is "
             "slow too: compute the count with a formula instead, or give your function longer:"]
    return "\n".join(lines[:2] + [textwrap.fill(line.strip(), 110, initial_indent="  ", subsequent_indent="    ",
                                                 break_long_words=False, break_on_hyphens=False)
                                   for line in lines[2:]]
                     + [f"    check_{name}({fn_name}, time_limit={max(4 * limit, 120):g})"])


def generator(name: str) -> torch.Generator:
    """A generator seeded from ``name``, so an exercise draws the same inputs every time."""
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(dtype)


def dtype_name(dtype: torch.dtype) -> str:
    """How a case label names a dtype: 'float32', 'bfloat16'."""
    return str(dtype).removeprefix("torch.")


def clone(value: Any) -> Any:
    """A deep copy of tensors, modules, tuples, lists and dicts, so no call sees another's changes."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, torch.nn.Module):
        return copy.deepcopy(value)
    if isinstance(value, tuple):
        return tuple(clone(v) for v in value)
    if isinstance(value, list):
        return [clone(v) for v in value]
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    return value


def _fmt_number(x) -> str:
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return _fmt_float(x)
    return repr(x)


def _fmt_float(x: float) -> str:
    """A float as a learner can compare it with an int printed as ``270,582,939,648``: thousands separators and
    the digits after the point up to the sixth (``270,582,939,648.5``, ``0.000123``, ``1.5e-09``); never an
    exponent that hides the last digits of a large number."""
    if not math.isfinite(x):
        return repr(x)
    if x != 0 and abs(x) < 1e-4:
        return f"{x:.6g}"
    text = f"{x:,.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def describe(value: Any) -> str:
    """A short, readable rendering of a value (tensors: shape, dtype and a few numbers)."""
    if isinstance(value, torch.Tensor):
        head = f"tensor of shape {tuple(value.shape)}, {dtype_name(value.dtype)}"
        if value.numel() == 0:
            return head
        if value.dtype == torch.bool:
            return f"{head}: {value.int().tolist()}" if value.numel() <= 16 else head
        flat = value.detach().float().flatten()
        shown = ", ".join(f"{v:.4f}" for v in flat[:6].tolist())
        return f"{head}: [{shown}{', ...' if flat.numel() > 6 else ''}]"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(describe(v) for v in value) + ")"
    if isinstance(value, (np.integer, np.bool_)):  # np.int64(7) reads 7, as an int does
        value = _plain_number(value)
    if isinstance(value, np.floating):  # np.float32(3.5) reads 3.5, with the digits of a float
        return _fmt_float(float(value))
    return _fmt_number(value)


def _index_str(idx: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in idx) + "]"


def _plain_number(value: Any) -> Any:
    """A Python bool, int or float for a number of another kind: a numpy integer or bool, a tensor or numpy array
    with one element (e.g. ``torch.tensor(3)``, ``np.array(3)``); anything else unchanged. A numpy float other than
    ``np.float64`` (already a float) stays as it is."""
    if isinstance(value, (torch.Tensor, np.ndarray)) and (value.numel() if isinstance(value, torch.Tensor)
                                                          else value.size) == 1:
        return value.item()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):  # np.int64, np.uint8, ...
        return int(value)
    return value


def compare(expected: Any, received: Any, tol: tuple[float, float] | None = None, index: bool = False) -> str | None:
    """None when ``received`` matches ``expected``; otherwise one line saying how it differs.
    ``tol``: (atol, rtol) for floating-point tensors instead of ``TOLERANCES``.

    Where an int is expected, an integer of any kind with the right value matches: a Python int, a numpy integer
    (np.int64, np.int32, ...), a one-element integer tensor or array; so does a float of any kind equal to it within
    the rounding of float64 arithmetic, relative 1e-12 (3.0, or 270582939647.99997 from a byte count computed
    with ``/`` and ``*``), unless ``index`` says the int is an index, which a float cannot be. A float further
    off (0.5 at 37,748,736 is 1.3e-8 relative; a float32 that cannot hold the count exactly), a bool, or any other
    type does not, and the message prints the float with its digits (``270,582,939,648.5``) so that a learner
    sees where it differs."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(received, torch.Tensor):
            return f"expected a tensor of shape {tuple(expected.shape)}, received a {type(received).__name__}"
        if received.shape != expected.shape:
            return f"expected shape {tuple(expected.shape)}, received shape {tuple(received.shape)}"
        if expected.dtype == torch.bool or received.dtype == torch.bool:
            if received.dtype != expected.dtype:
                return f"expected dtype {expected.dtype}, received dtype {received.dtype}"
            wrong = (received != expected).nonzero()
            if len(wrong):
                idx = tuple(wrong[0].tolist())
                return (f"first wrong entry at {_index_str(idx)}: expected {bool(expected[idx])}, "
                        f"received {bool(received[idx])}")
            return None
        if received.dtype != expected.dtype:
            return (f"expected dtype {dtype_name(expected.dtype)} (the inputs' dtype), received "
                    f"{dtype_name(received.dtype)}")
        atol, rtol = tol or TOLERANCES.get(expected.dtype, (1e-4, 1e-4))
        e, r = expected.detach().double(), received.detach().double()
        nan_r, nan_e = torch.isnan(r), torch.isnan(e)
        if (nan_r & ~nan_e).any():
            idx = tuple((nan_r & ~nan_e).nonzero()[0].tolist())
            return f"received NaN at {_index_str(idx)} where {e[idx].item():.4f} was expected"
        if (nan_e & ~nan_r).any():  # only where a mistake's output is the expected value
            idx = tuple((nan_e & ~nan_r).nonzero()[0].tolist())
            return f"expected NaN at {_index_str(idx)}, received {r[idx].item():.4f}"
        e, r = e.nan_to_num(0.0), r.nan_to_num(0.0)  # NaN in the same places: equal there
        excess = (r - e).abs() - (atol + rtol * e.abs())
        if not (excess > 0).any():
            return None
        idx = tuple(int(i) for i in torch.unravel_index(excess.argmax(), excess.shape))
        allowed = "compared exactly" if atol == rtol == 0 else f"tolerance {atol:g} + {rtol:g} x |expected|"
        shown_e, shown_r = f"{e[idx].item():.4f}", f"{r[idx].item():.4f}"
        if shown_e == shown_r:  # apart by less than the fourth decimal: show the digits where they differ
            shown_e, shown_r = f"{e[idx].item():.9g}", f"{r[idx].item():.9g}"
        return f"largest difference at index {_index_str(idx)}: expected {shown_e}, received {shown_r} ({allowed})"
    if isinstance(expected, (tuple, list)):
        if not isinstance(received, (tuple, list)) or len(received) != len(expected):
            return f"expected {len(expected)} values {describe(expected)}, received {describe(received)}"
        for i, (e, r) in enumerate(zip(expected, received, strict=True)):
            why = compare(e, r, tol, index)
            if why:
                return f"value {i}: {why}"
        return None
    if isinstance(expected, bool) or isinstance(expected, int):
        received = _plain_number(received)
        if isinstance(received, (float, np.floating)) and not isinstance(expected, bool):
            kind = "float" if isinstance(received, float) else type(received).__name__  # np.float64 is a float
            value = float(received)
            if index and value.is_integer():
                return (f"expected {_fmt_number(expected)}, received {value!r} ({kind}): an index must be "
                        "an int, as `//` gives (`/` gives a float, which cannot index a list or a tensor)")
            close = math.isfinite(value) and abs(value - expected) <= INT_AS_FLOAT_RTOL * max(abs(expected), 1)
            if close and not index:
                return None  # the same count, computed in floating point
            return f"expected {_fmt_number(expected)}, received {_fmt_float(value)} ({kind})"
        if not isinstance(received, int) or isinstance(received, bool) != isinstance(expected, bool):
            return f"expected {_fmt_number(expected)}, received {describe(received)} ({type(received).__name__})"
        return None if received == expected else f"expected {_fmt_number(expected)}, received {_fmt_number(received)}"
    if isinstance(expected, float):
        try:
            ok = math.isclose(float(received), expected, rel_tol=1e-6)
        except (TypeError, ValueError):
            ok = False
        return None if ok else f"expected {_fmt_number(expected)}, received {describe(received)}"
    return None if received == expected else f"expected {describe(expected)}, received {describe(received)}"


def _expected_received(expected: Any, received: Any, why: str) -> list[str]:
    """Lines showing the expected and received values where they differ most (a tensor: that row)."""
    if (isinstance(expected, torch.Tensor) and isinstance(received, torch.Tensor) and expected.ndim >= 1
            and received.shape == expected.shape and expected.dtype != torch.bool and expected.numel() > 6):
        diff = (received.detach().double() - expected.detach().double()).abs().nan_to_num(float("inf"))
        idx = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))[:-1]
        where = _index_str(idx)[:-1] + (", :]" if idx else ":]")
        return [f"  expected{where} {describe(expected[idx])}", f"  received{where} {describe(received[idx])}"]
    if why.startswith("expected ") and not isinstance(expected, (torch.Tensor, tuple, list)):
        return []
    return [f"  expected: {describe(expected)}", f"  received: {describe(received)}"]


def _call(fn: Callable, case: Case, limit: float | None, rule: Rule | None = None) -> tuple[Any, Watch | None]:
    """Run ``fn`` on fresh copies of the case's inputs within ``limit`` seconds (None: no limit; running longer
    raises _TimeLimit); NotImplementedError or None becomes _NotYet. With a ``rule``, ``fn`` runs inside the
    rule's watch (in the thread that runs it), which is returned beside the output."""
    args = clone(case.args)
    watch = rule.watch(args) if rule is not None else None

    def watched(*a):
        with watch:
            return fn(*a)

    try:
        out = call_with_time_limit(fn if watch is None else watched, args, limit)
    except NotImplementedError as e:
        raise _NotYet(f"it raised NotImplementedError{': ' + str(e) if str(e) else ''}") from None
    if out is None:
        raise _NotYet("it returned None (is a `return` missing?)")
    return out, watch


class Watch:
    """What a :class:`Rule` watches during one call of the learner's function: a context manager entered around
    the call, and afterwards ``broken()``, the line that says how the call broke the rule, or None."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def broken(self) -> str | None:
        return None


@dataclass
class Rule:
    """A condition on how the answer is computed, beyond what it returns (notebook 04's ``gqa`` must not copy K and
    V): ``watch(args)`` gives the :class:`Watch` for one call on ``args``, the very tensors the function receives.
    ``what`` says the rule in a few words, for the "correct" message."""

    what: str
    watch: Callable[[tuple], Watch]


_FAILED = object()  # a function raised, ran out of time or returned nothing on a case


def _where_in_learner_code(err: BaseException, fn: Callable) -> str:
    """' (line N of name)': the last line of the learner's own file (their cell) that the error passed through."""
    own = getattr(getattr(fn, "__code__", None), "co_filename", None)
    tb, last = err.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == own:
            last = tb
        tb = tb.tb_next
    return f" (line {last.tb_lineno} of {last.tb_frame.f_code.co_name})" if last is not None else ""


class Exercise:
    """One exercise: a reference, its cases (built on demand) and the mistakes it recognises.

    ``nan_hint(case, index)``: a sentence added where the learner's output holds NaN that the reference does not
    (attention: a row whose every score was masked). ``rule``: a :class:`Rule` on how the answer is computed,
    checked on every case whose output is right."""

    def __init__(self, name: str, title: str, reference: Callable, cases: Callable[[], list[Case]],
                 mistakes: list[Mistake] | None = None, reference_name: str = "", summary: str = "",
                 index: bool = False, nan_hint: Callable[[Case, tuple[int, ...]], str] | None = None,
                 rule: Rule | None = None):
        """``index``: the answer is an index (a head number), so a float such as 1.0 is wrong (see :func:`compare`)."""
        self.name, self.title, self.reference, self.summary = name, title, reference, summary
        self._cases, self.mistakes, self.index = cases, list(mistakes or []), index
        self.nan_hint, self.rule = nan_hint, rule
        self.reference_name = reference_name or f"the reference `{reference.__module__}.{reference.__name__}`"

    def cases(self) -> list[Case]:
        return sorted(self._cases(), key=lambda c: c.size)

    def mistake_output(self, mistake: Mistake, case: Case) -> Any:
        """What ``mistake`` returns on ``case`` (fresh copies of its inputs), or _FAILED if it raises."""
        try:
            return mistake.fn(*clone(case.args))
        except Exception:  # a mistake that cannot run on this input did not make any output there
            return _FAILED

    def same(self, a: Any, b: Any, case: Case) -> bool:
        """Whether two outputs on ``case`` agree, as the checker compares (``b`` measured against ``a``)."""
        return a is not _FAILED and b is not _FAILED and compare(a, b, case.tol, self.index) is None

    def recognise(self, fn: Callable, cases: list[Case], failing: int, received: Any,
                  expected: Callable[[int], Any], limit: float | None) -> Mistake | None:
        """The known mistake that ``fn`` makes, or None.

        A mistake is named only when it reproduces ``fn``'s output on EVERY case of the exercise, and differs from
        the reference on at least two of them. The cases are chosen so that no two known mistakes agree on all of
        them (``tests/test_exercises.py`` checks it), so at most one mistake can be named, and an output that a
        mistake matches on the failing case by coincidence (forgetting ``bytes_per_number`` gives the "keys only"
        number wherever it is 2) is not named: the message then gives the smallest failing input, the expected and
        the received values, and no name. ``fn`` is run on the other cases only when some mistake matches the
        failing one; where it raises or runs out of time there, no mistake is named.
        """
        case = cases[failing]
        candidates = [m for m in self.mistakes
                      if not self.same(expected(failing), out := self.mistake_output(m, case), case)
                      and self.same(out, received, case)]
        learner: dict[int, Any] = {failing: received}
        for mistake in candidates:
            differs = 0
            for i, other in enumerate(cases):
                buggy = self.mistake_output(mistake, other)
                if i not in learner:
                    learner[i] = self._quiet_call(fn, other, limit)
                if not self.same(buggy, learner[i], other):
                    break
                differs += not self.same(expected(i), buggy, other)
            else:
                if differs >= 2:
                    return mistake
        return None

    @staticmethod
    def _quiet_call(fn: Callable, case: Case, limit: float | None) -> Any:
        try:
            return _call(fn, case, limit)[0]
        except (Exception, _NotYet, _TimeLimit):
            return _FAILED

    def evaluate(self, fn: Callable, time_limit: float | None = None) -> Result:
        """Run ``fn`` on every case, smallest first; never raises for anything ``fn`` does. Each call of ``fn`` may
        take ``time_limit`` seconds (default: ``$GQA_EXERCISE_TIME_LIMIT`` or :data:`TIME_LIMIT_S`; 0: no limit);
        one that runs longer is stopped and reported as wrong on that input (:func:`call_with_time_limit`)."""
        title = self.title
        if not callable(fn):
            return Result("wrong", f"wrong: {title}\n  expected a function, received {describe(fn)}")
        with torch.no_grad():
            return self._evaluate(fn, title, time_limit_s(time_limit))

    def _evaluate(self, fn: Callable, title: str, limit: float | None) -> Result:
        cases = self.cases()
        references: dict[int, Any] = {}

        def expected(i: int) -> Any:
            if i not in references:
                references[i] = self.reference(*clone(cases[i].args))
            return references[i]

        rule_broken: str | None = None  # the message for the first case that broke the rule, kept until every
        for i, case in enumerate(cases):  # case's numbers are checked: wrong numbers are told first
            try:
                received, watch = _call(fn, case, limit, self.rule)
            except _TimeLimit as e:
                return Result("wrong", _time_limit_message(self.name, title, case, limit, e, fn))
            except _NotYet as e:
                return Result("not yet", f"not yet: {title}: {e}. Replace `raise NotImplementedError` with your code "
                                         "and run the cell again.")
            except Exception as e:  # the learner's code failed: report it, never raise
                return Result("wrong", f"wrong: {title}\n  smallest failing input: {case.label}\n"
                                       f"  your function raised {type(e).__name__}{_where_in_learner_code(e, fn)}: "
                                       f"{' '.join(str(e).split())[:400]}")
            why = compare(expected(i), received, case.tol, self.index)
            if why is None:
                broken = watch.broken() if watch is not None else None
                if broken and rule_broken is None:
                    rule_broken = "\n".join([f"wrong: {title}", f"  smallest failing input: {case.label}",
                                             _wrap(f"the numbers are right on every input, but {broken}")])
                continue
            lines = [f"wrong: {title}", f"  smallest failing input: {case.label}", f"  {why}"]
            lines += _expected_received(expected(i), received, why)
            mistake = self.recognise(fn, cases, i, received, expected, limit)
            if mistake is not None:
                lines.append(_wrap(f"known mistake, {mistake.name}: {mistake.message(case)}"))
            elif self.nan_hint is not None and why.startswith("received NaN at "):
                idx = tuple(int(k) for k in re.findall(r"\d+", why.removeprefix("received NaN at ").split("]")[0]))
                lines.append(_wrap(self.nan_hint(case, idx)))
            return Result("wrong", "\n".join(lines), mistake.name if mistake else None)
        if rule_broken is not None:
            return Result("wrong", rule_broken)
        shown = [f"  - {self.summary}"] if self.summary else [f"  - {c.label}" for c in cases]
        rule = [f"  and {self.rule.what} on every input"] if self.rule is not None else []
        return Result("correct", f"correct: {title}\n  {len(cases)} inputs agree with {self.reference_name}:\n"
                                 + "\n".join(shown + rule))

    def check(self, fn: Callable, time_limit: float | None = None) -> None:
        """Print whether ``fn`` is correct, not yet written, or wrong (and how); ``time_limit`` as in
        :meth:`evaluate`."""
        try:
            result = self.evaluate(fn, time_limit)
        except Exception as e:  # a defect of the checker itself must not look like the learner's error
            print(f"the checker for {self.title!r} failed ({type(e).__name__}: {e}); please report this")
            return
        print(result.message)


def _wrap(text: str) -> str:
    return textwrap.fill(text, 110, initial_indent="  ", subsequent_indent="    ", break_long_words=False,
                         break_on_hyphens=False)


def masked_row_hint(case: Case, idx: tuple[int, ...]) -> str:
    """The NaN hint of the attention exercises: NaN is what softmax gives a row whose every score is -inf.

    ``idx`` is the first NaN's index in an output of shape (batch, heads, queries, head_dim) or, after the output
    projection, (batch, queries, d_model)."""
    if len(idx) == 4:
        who = f"query {idx[2]} of head {idx[1]} in sequence {idx[0]}"
    elif len(idx) == 3:
        who = f"query {idx[1]} of sequence {idx[0]}"
    else:
        who = "that query"
    return (f"hint: softmax of a row whose scores are all -inf is 0 / 0 = NaN. If your mask hid every key from "
            f"{who}, its row of scores has nothing to attend to: check which keys your mask leaves it. A causal "
            "query always sees at least its own key; where a row may really be empty (a pad position), set its "
            "weights or its output to 0 instead of leaving it to the softmax.")


def attention_label(batch: int, n_heads: int, n_kv_heads: int, s_q: int, s_k: int, head_dim: int,
                    dtype: torch.dtype) -> str:
    """'batch 2, 6 query heads, 2 KV heads (GQA), 3 queries against 7 keys, head_dim 8, float32'."""
    kind = "MHA" if n_kv_heads == n_heads else "MQA" if n_kv_heads == 1 else "GQA"
    return (f"batch {batch}, {n_heads} query head{'s' * (n_heads > 1)}, {n_kv_heads} KV head{'s' * (n_kv_heads > 1)} "
            f"({kind}), "
            f"{s_q} quer{'ies' if s_q > 1 else 'y'} against {s_k} key{'s' * (s_k > 1)}, head_dim {head_dim}, "
            f"{dtype_name(dtype)}")


def qkv(gen: torch.Generator, batch: int, n_heads: int, n_kv_heads: int, s_q: int, s_k: int, head_dim: int,
        dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q (batch, n_heads, s_q, head_dim), k and v (batch, n_kv_heads, s_k, head_dim)."""
    return (randn(gen, batch, n_heads, s_q, head_dim, dtype=dtype),
            randn(gen, batch, n_kv_heads, s_k, head_dim, dtype=dtype),
            randn(gen, batch, n_kv_heads, s_k, head_dim, dtype=dtype))


# ------------------------------------------------------------------------- case builders shared by the exercises
def seeded_cases(name: str, rows: Iterable[tuple], build: Callable[..., Case]) -> list[Case]:
    """One :class:`Case` per row: ``build(gen, *row)``, every row drawing its random inputs in turn from the one
    generator ``generator(name)``, so an exercise gets the same inputs every time (the same as a loop over
    ``rows`` that draws from ``gen`` would get)."""
    gen = generator(name)
    return [build(gen, *row) for row in rows]


def attention_case(gen: torch.Generator, batch: int, n_heads: int, n_kv_heads: int, s_q: int, s_k: int,
                   head_dim: int, dtype: torch.dtype = torch.float32) -> Case:
    """An attention input ``(q, k, v)`` drawn by :func:`qkv`: q of shape (batch, n_heads, s_q, head_dim), k and v
    of shape (batch, n_kv_heads, s_k, head_dim); labelled by :func:`attention_label`; its size is
    batch x n_heads x s_q x s_k x head_dim (the multiply-adds of the scores); ``info`` holds n_heads, n_kv_heads,
    s_q and s_k for the mistakes' explanations."""
    return Case(attention_label(batch, n_heads, n_kv_heads, s_q, s_k, head_dim, dtype),
                qkv(gen, batch, n_heads, n_kv_heads, s_q, s_k, head_dim, dtype),
                size=batch * n_heads * s_q * s_k * head_dim,
                info={"n_heads": n_heads, "n_kv_heads": n_kv_heads, "s_q": s_q, "s_k": s_k})


def kv_projection_case(gen: torch.Generator, n_kv_heads: int, head_dim: int, d_model: int, dtype: torch.dtype,
                       heads: str, more: tuple, size: int) -> Case:
    """A k_proj (or v_proj) weight ``w`` of shape (n_kv_heads * head_dim, d_model), drawn from ``gen``, as the
    input ``(w, *more)``; the label reads 'w of shape (4, 3) = (n_kv_heads * head_dim, d_model), <heads>,
    head_dim 2, float32', ``heads`` saying what the exercise does with the KV heads ('n_heads=4, n_kv_heads=2')."""
    label = (f"w of shape ({n_kv_heads * head_dim}, {d_model}) = (n_kv_heads * head_dim, d_model), {heads}, "
             f"head_dim {head_dim}, {dtype_name(dtype)}")
    return Case(label, (randn(gen, n_kv_heads * head_dim, d_model, dtype=dtype), *more), size=size)
