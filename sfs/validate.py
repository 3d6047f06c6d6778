"""Argument checks shared by the library and the command line: each rule is written once, here.

Every check returns the value it accepted (normalised: a numpy int becomes an int, a list a tuple)
or raises an error whose message names the parameter and says what it accepts:

- ``TypeError`` when the value is of the wrong kind (a float where an int belongs, a bool for a
  number, a dict for a config, a float tensor for labels);
- ``ValueError`` when it is of the right kind but outside its range or of the wrong shape, or
  holds NaN or inf.

    check_int("steps", 0, low=1)     # ValueError: steps must be an int >= 1, got 0
    check_float("eta", 1.5, 0, 1)    # ValueError: eta must be a finite number in [0, 1], got 1.5

The second half makes argparse ``type=`` converters from the same rules (``positive_int``,
``fraction``, ...), so ``--steps 0`` ends in one line: ``argument --steps: '0' is not an int >= 1``.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
from pathlib import Path
from typing import Callable, Iterable

import torch


def _span(low, high, low_open: bool = False, high_open: bool = False) -> str:
    """' in [0, 1)', ' >= 1', ' > 0', '' : the accepted range, as messages print it."""
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""


def _hint(hint: str) -> str:
    return f" ({hint})" if hint else ""


def check_int(name: str, value, low: int | None = None, high: int | None = None, hint: str = "") -> int:
    """``value`` as an int in [low, high] (either end may be None: unbounded). Bools are refused."""
    rule = f"{name} must be an int{_span(low, high)}{_hint(hint)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{rule}, got {type(value).__name__} {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{rule}, got {value!r}")
    return int(value)


def check_float(name: str, value, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, hint: str = "") -> float:
    """``value`` as a finite float in the range [low, high] (``low_open``/``high_open``: the end
    itself is excluded). Ints are accepted; bools, strings and tensors are not."""
    rule = f"{name} must be a finite number{_span(low, high, low_open, high_open)}{_hint(hint)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{rule}, got {type(value).__name__} {value!r}")
    v = float(value)
    if (not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low))
            or (high is not None and (v >= high if high_open else v > high))):
        raise ValueError(f"{rule}, got {value!r}")
    return v


def check_ints(name: str, values, low: int | None = 1, nonempty: bool = False) -> tuple[int, ...]:
    """``values`` (a tuple or list) as a tuple of ints, each >= ``low``; ``nonempty``: at least one."""
    rule = f"{name} must be a {'non-empty ' if nonempty else ''}tuple of ints{_span(low, None)}"
    if not isinstance(values, (tuple, list)):
        raise TypeError(f"{rule}, got {type(values).__name__} {values!r}")
    if nonempty and not values:
        raise ValueError(f"{rule}, got {values!r}")
    for i, v in enumerate(values):
        try:
            check_int(f"{name}[{i}]", v, low)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{rule}, got {values!r}: {e}") from None
    return tuple(int(v) for v in values)


def check_choice(name: str, value, choices: Iterable):
    """``value`` if it is one of ``choices``, else ValueError listing them."""
    choices = tuple(choices)
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_type(name: str, value, types: type | tuple[type, ...], what: str = ""):
    """``value`` if it is an instance of ``types``, else TypeError naming what was expected."""
    if not isinstance(value, types):
        expected = what or " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
    return value


def _kind_of(x: torch.Tensor) -> str:
    if x.is_floating_point():
        return "float"
    if x.is_complex():
        return "complex"
    return "bool" if x.dtype == torch.bool else "int"


def check_tensor(name: str, x, kind: str | None = None, shape: tuple | None = None,
                 dims: str = "", ndim: int | None = None) -> torch.Tensor:
    """``x`` if it is a torch tensor of the given kind and shape, else TypeError / ValueError.

    kind: "float" (any floating dtype) or "int" (an integer dtype; bool is not an integer here), or
    None for any. shape: the exact shape, with None for a dimension of any size; ``dims`` names the
    dimensions for the message, e.g. "(B, in_channels, image_size, image_size)". ndim: the number of
    dimensions only (when the sizes are free).
    """
    a = "an integer" if kind == "int" else f"a {kind}" if kind else "a"
    want = f"{a} tensor"
    if shape is not None:
        want += f" of shape {dims} = {_shape_text(shape)}" if dims else f" of shape {_shape_text(shape)}"
    if ndim is not None and shape is None:
        want += f" with {ndim} dimensions"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be {want}, got {type(x).__name__}")
    got = f"{x.dtype} tensor of shape {tuple(x.shape)}".replace("torch.", "")
    if kind is not None and _kind_of(x) != kind:
        raise TypeError(f"{name} must be {want}, got {got}")
    if ((shape is not None and (x.ndim != len(shape) or any(s is not None and n != s
                                                             for n, s in zip(x.shape, shape))))
            or (ndim is not None and x.ndim != ndim)):
        raise ValueError(f"{name} must be {want}, got {got}")
    return x


def _shape_text(shape: tuple) -> str:
    parts = ["*" if s is None else str(s) for s in shape]
    return f"({parts[0]},)" if len(parts) == 1 else f"({', '.join(parts)})"


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """``x`` if every entry is finite, else ValueError counting the NaN and inf entries.

    Reads the tensor (a device sync on a GPU): for inputs whose NaN would pass silently.
    """
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite (no NaN or inf), got {int(torch.isnan(x).sum())} NaN "
                         f"and {int(torch.isinf(x).sum())} inf entries of {x.numel()}")
    return x


def check_range(name: str, x: torch.Tensor, low: int | float, high: int | float, what: str = "values",
                hint: str = "") -> torch.Tensor:
    """``x`` if all its entries lie in [low, high], else ValueError with the range found.

    Only CPU tensors are read: on a GPU, reading min and max waits for the device at every call (the
    U-Net's forward pass in training); there a bad value fails later, inside torch.
    """
    if x.numel() and x.device.type == "cpu":
        lo, hi = x.min().item(), x.max().item()
        if lo < low or hi > high:
            raise ValueError(f"{name} must hold {what} in [{low}, {high}]{_hint(hint)}, "
                             f"got values in [{lo}, {hi}]")
    return x


def check_plain_name(name: str, value) -> str:
    """A file name without a folder: no path separator, not empty, not '.' or '..', no NUL.

    For names that become files inside a given folder (``--export NAME`` -> models/NAME.safetensors),
    so that nothing is written outside it.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a plain file name (str), got {type(value).__name__}")
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if (not value or value in (".", "..") or value.startswith(".") or "\0" in value
            or any(s in value for s in seps)):
        raise ValueError(f"{name} must be a plain file name: not empty, no path separator "
                         f"('/' or '\\\\'), not starting with '.', got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------
# argparse types: the same rules, for the command line. argparse prints an ArgumentTypeError as
# "prog: error: argument --steps: '0' is not an int >= 1" and exits with status 2.

def _arg_type(parse: Callable[[str], object], check: Callable, label: str) -> Callable[[str], object]:
    def convert(text: str):
        try:
            return check(parse(text))
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {label}") from None
    convert.__name__ = label  # argparse names the type by it in its own messages
    return convert


def int_arg(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """argparse type: text -> an int in [low, high]."""
    return _arg_type(int, lambda v: check_int("value", v, low, high), f"an int{_span(low, high)}")


def float_arg(low: float | None = None, high: float | None = None, low_open: bool = False,
              high_open: bool = False) -> Callable[[str], float]:
    """argparse type: text -> a finite float in the given range."""
    return _arg_type(float, lambda v: check_float("value", v, low, high, low_open, high_open),
                     f"a finite number{_span(low, high, low_open, high_open)}")


def ints_arg(low: int = 1, nonempty: bool = True) -> Callable[[str], tuple[int, ...]]:
    """argparse type: "1,2,2" -> (1, 2, 2), each int >= ``low``; ``nonempty=False`` also takes ""."""
    def parse(text: str) -> tuple[int, ...]:
        return tuple(int(v) for v in text.split(",")) if text.strip() else ()
    label = f"a {'non-empty ' if nonempty else ''}comma-separated list of ints{_span(low, None)}"
    return _arg_type(parse, lambda v: check_ints("value", v, low, nonempty), label)


positive_int = int_arg(low=1)
nonnegative_int = int_arg(low=0)
positive_float = float_arg(0, low_open=True)
nonnegative_float = float_arg(0)
finite_float = float_arg()
fraction = float_arg(0, 1)                      # a probability: [0, 1]
fraction_below_one = float_arg(0, 1, high_open=True)  # [0, 1): dropout, an EMA decay
positive_ints = ints_arg(low=1)                 # "1,2,2"
plain_name = _arg_type(str, lambda v: check_plain_name("value", v),
                       "a plain name (no folder, no '/', not starting with '.')")


def existing_dir(text: str) -> str:
    """argparse type: a folder that exists."""
    if not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not an existing folder")
    return text
