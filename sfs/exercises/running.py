"""Running a reader's function safely: a time limit, and words for what changed or came back.

Used by ``sfs.exercises.core``: every call of the reader's function goes through
``call_with_time_limit`` on deep copies of the arguments, ``input_change`` compares each copy with
the original afterwards, and ``describe`` names whatever the function returned ("a numpy ndarray of
shape (4, 2)") when it is not what the exercise expects.
"""

from __future__ import annotations

import ctypes
import dataclasses
import signal
import threading
from typing import Any, Callable

import torch


class TimeLimitExceeded(BaseException):
    """Raised inside the reader's function when it runs past the time limit. A BaseException, so
    that an ``except Exception`` in the reader's code does not swallow it."""


def call_with_time_limit(fn: Callable, args: tuple, seconds: float | None) -> Any:
    """fn(*args), or TimeLimitExceeded after ``seconds``.

    In the main thread (a Jupyter kernel runs cells there, and so does pytest) a SIGALRM timer
    raises inside fn; it re-fires every 0.5 s in case fn catches it. Elsewhere, or when a timer is
    already pending, fn runs in a daemon thread and is stopped with an asynchronous exception
    (both interrupt Python code, not a single long C call, which finishes first).
    """
    if seconds is None:
        return fn(*args)
    if (threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
            and signal.getitimer(signal.ITIMER_REAL)[0] == 0):
        armed = [True]

        def on_alarm(signum, frame):
            if armed[0]:
                raise TimeLimitExceeded()

        previous = signal.signal(signal.SIGALRM, on_alarm)
        try:
            signal.setitimer(signal.ITIMER_REAL, seconds, 0.5)
            try:
                return fn(*args)
            finally:
                armed[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
    box: dict[str, Any] = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            box["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident),
                                                   ctypes.py_object(TimeLimitExceeded))
        worker.join(1.0)
        raise TimeLimitExceeded()
    if "error" in box:
        raise box["error"]
    return box["value"]


def equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equal values (NaN equal to NaN), same shape and dtype."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(torch.equal(torch.isnan(a), torch.isnan(b))
                    and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)))
    return bool(torch.equal(a, b))


def describe(x: Any) -> str:
    """"a numpy ndarray of shape (4, 2)", "a list of length 3", "a Python float", "str", ..."""
    if isinstance(x, torch.Tensor):
        return f"a torch.Tensor of shape {tuple(x.shape)} ({x.dtype})"
    mod = type(x).__module__.split(".")[0]
    if mod == "numpy":
        shape = getattr(x, "shape", None)
        if shape:
            return f"a numpy {type(x).__name__} of shape {tuple(shape)}"
        return f"a numpy {type(x).__name__} (a scalar)"
    if isinstance(x, (list, tuple)):
        return f"a {type(x).__name__} of length {len(x)}"
    if isinstance(x, str):
        return f"a str ({x[:20]!r})"
    if isinstance(x, bool):
        return "a bool"
    if isinstance(x, (int, float, complex)):
        return f"a Python {type(x).__name__}"
    return f"an object of type {type(x).__name__}"


def input_change(before: Any, after: Any, name: str) -> str | None:
    """The name of the first part of an argument that differs after the call
    ("schedule.alpha_bar", "x0", "args[2]"), or None when nothing changed."""
    if isinstance(before, torch.Tensor):
        return None if isinstance(after, torch.Tensor) and equal(before, after) else name
    if isinstance(before, torch.nn.Module):  # a model argument: its weights and buffers, and its mode
        if not isinstance(after, torch.nn.Module) or after.training != before.training:
            return name
        sb, sa = before.state_dict(), after.state_dict()
        if sb.keys() != sa.keys():
            return name
        return next((f"{name}.{k}" for k in sb if not equal(sb[k], sa[k])), None)
    if isinstance(before, (list, tuple)):
        if type(after) is not type(before) or len(after) != len(before):
            return name
        for i, (b, a) in enumerate(zip(before, after)):
            where = input_change(b, a, f"{name}[{i}]")
            if where:
                return where
        return None
    if isinstance(before, dict):
        if not isinstance(after, dict) or before.keys() != after.keys():
            return name
        for k in before:
            where = input_change(before[k], after[k], f"{name}[{k!r}]")
            if where:
                return where
        return None
    if dataclasses.is_dataclass(before) or (hasattr(before, "__dict__") and not callable(before)
                                             and not isinstance(before, type)):
        vb, va = vars(before), getattr(after, "__dict__", None)
        if va is None or vb.keys() != va.keys():
            return name
        for k in vb:
            where = input_change(vb[k], va[k], f"{name}.{k}")
            if where:
                return where
        return None
    try:
        return None if bool(before == after) else name
    except Exception:
        return None
