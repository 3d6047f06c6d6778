"""The grading core: run a reader's function on random inputs, compare with a reference, explain.

An ``Exercise`` holds a reference implementation (usually the ``sfs`` function the chapter
builds), a few input cases, a list of known ``Mistake`` variants (beta instead of sqrt(beta),
alpha instead of alpha_bar, no broadcast over the batch, ...) and a readable ``solution``.
Calling it on the reader's function prints either "Correct" or a hint that says what is wrong;
it never raises, whatever the reader's code does. ``grade`` returns the same verdict as a
``Result`` (the tests assert on its message).

The order of the diagnosis, first match wins:
1. the function raised: show the exception's type and message (and the broadcasting hint when
   the message is PyTorch's shape mismatch);
2. it returned None, or not a tensor/number;
3. it gave different answers for the same inputs (random), or changed its inputs in place;
4. wrong shape (checked against the known mistakes first, e.g. "returned T values, not T + 1");
5. NaN or inf;
6. it matches a known mistake on every case: that mistake's hint;
7. generic patterns: the negative of the answer (wrong sign), its square or square root, wrong
   only where t = 0, wrong only for part of the batch;
8. otherwise: the largest error and where it happened.
"""

from __future__ import annotations

import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch


@dataclass
class Result:
    """The verdict of one check: ``correct`` and the message printed to the reader."""

    correct: bool
    message: str

    def __bool__(self) -> bool:
        return self.correct


@dataclass
class Case:
    """One set of inputs. ``args`` are passed positionally; ``t`` marks timesteps per batch row
    (used to say "wrong at t = 0"); ``label`` says in words what the case is."""

    args: tuple
    label: str = ""
    t: torch.Tensor | None = None


@dataclass
class Mistake:
    """A plausible wrong answer, written as a function with the reference's signature."""

    fn: Callable
    hint: str


def _clone(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, tuple):
        return tuple(_clone(v) for v in x)
    if isinstance(x, list):
        return [_clone(v) for v in x]
    return x  # schedules and numbers are shared; in-place edits of tensors are caught below


def _same_inputs(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return all(_same_inputs(u, v) for u, v in zip(a, b))
    return True


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> bool:
    if a.shape != b.shape:
        return False
    a, b = a.double(), b.double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return bool(torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)))
    return bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def _fmt(x: torch.Tensor, n: int = 4) -> str:
    flat = x.detach().double().flatten()[:n].tolist()
    more = ", ..." if x.numel() > n else ""
    return "[" + ", ".join(f"{v:.4g}" for v in flat) + more + "]"


def _is_broadcast_error(e: Exception) -> bool:
    msg = str(e)
    return ("must match the size of tensor" in msg or "The size of tensor a" in msg
            or "shape mismatch" in msg or "cannot be broadcast" in msg)


BROADCAST_HINT = ("Indexing a (T,) schedule tensor with t of shape (B,) gives shape (B,), which does "
                  "not broadcast against data of shape (B, C, H, W) or (B, 2). Reshape the "
                  "coefficient to (B, 1, ..., 1) first, e.g. `a.view(-1, *[1] * (x.ndim - 1))`.")


class Exercise:
    """A checked exercise. ``check(fn)`` prints the verdict; ``hint()``, ``solution()`` help.

    reference: the correct function, used to compute the expected output of every case.
    cases: a function of a torch.Generator returning a list of ``Case``.
    mistakes: known wrong variants, each with the hint shown when the reader's output matches it.
    solution: a readable correct implementation whose source ``solution()`` prints.
    output: "tensor" (a torch.Tensor is required), "number" (a float, int or 0-d tensor) or
    "tensors" (a tuple of tensors, e.g. a mean and a covariance).
    """

    def __init__(self, name: str, reference: Callable, cases: Callable[[torch.Generator], list[Case]],
                 solution: Callable, hint: str, mistakes: Sequence[Mistake] = (),
                 output: str = "tensor", rtol: float = 1e-4, atol: float = 1e-5,
                 broadcast_hint: str | None = BROADCAST_HINT, deterministic: bool = True):
        self.name = name
        self.reference = reference
        self.cases = cases
        self._solution = solution
        self._hint = hint
        self.mistakes = list(mistakes)
        self.output = output
        self.rtol, self.atol = rtol, atol
        self.broadcast_hint = broadcast_hint
        self.deterministic = deterministic
        self.__doc__ = f"Check your `{name}`: prints 'Correct' or a hint. See .hint() and .solution()."

    # -- what the reader calls -------------------------------------------------------------
    def __call__(self, fn: Callable) -> None:
        """Grade ``fn`` and print the verdict (returns nothing, so a notebook shows it once)."""
        print(self.grade(fn).message)

    def check(self, fn: Callable) -> None:
        """Same as calling the exercise."""
        self(fn)

    def hint(self) -> None:
        """Print a hint that gives away less than the solution."""
        print(f"Hint ({self.name}): {self._hint}")

    def solution(self) -> None:
        """Print the source of a reference solution."""
        print(self.solution_source())

    def solution_source(self) -> str:
        return textwrap.dedent(inspect.getsource(self._solution))

    def __repr__(self) -> str:
        return f"<exercise {self.name}: call it on your function to check it>"

    # -- grading ----------------------------------------------------------------------------
    def grade(self, fn: Callable) -> Result:
        """Run every case and return a ``Result``; never raises."""
        try:
            return self._grade(fn)
        except Exception as e:  # a bug in a checker must not crash the reader's notebook
            return Result(False, f"Could not check `{self.name}` ({type(e).__name__}: {e}).")

    def _fail(self, msg: str, label: str = "") -> Result:
        where = f" (case: {label})" if label else ""
        return Result(False, f"Not yet: {msg}{where}")

    def _as_output(self, out: Any) -> tuple[Any, str | None]:
        """Coerce the reader's output to the expected kind, or say why it cannot be."""
        if out is None:
            return None, "your function returned None. Did you forget `return`?"
        if self.output == "number":
            if isinstance(out, torch.Tensor):
                if out.numel() != 1:
                    return None, f"expected a single number, got a tensor of shape {tuple(out.shape)}"
                return out.detach().double().reshape(()), None
            if isinstance(out, bool) or not isinstance(out, (int, float)) and not hasattr(out, "__float__"):
                return None, f"expected a number, got {type(out).__name__}"
            return torch.tensor(float(out), dtype=torch.float64), None
        if self.output == "tensors":
            if not isinstance(out, (tuple, list)):
                return None, f"expected a tuple of tensors, got {type(out).__name__}"
            bad = [type(o).__name__ for o in out if not isinstance(o, torch.Tensor)]
            if bad:
                return None, f"expected a tuple of torch.Tensor, got elements of type {', '.join(bad)}"
            return tuple(o.detach() for o in out), None
        if not isinstance(out, torch.Tensor):
            extra = " Convert it with torch.as_tensor(...)." if hasattr(out, "__array__") else ""
            return None, f"expected a torch.Tensor, got {type(out).__name__}.{extra}"
        return out.detach(), None

    def _matches(self, out: Any, expected: Any) -> bool:
        if isinstance(expected, tuple):
            return (isinstance(out, tuple) and len(out) == len(expected)
                    and all(_close(o, e, self.rtol, self.atol) for o, e in zip(out, expected)))
        return _close(out, expected, self.rtol, self.atol)

    def _run_mistake(self, m: Mistake, case: Case) -> Any:
        try:
            out, err = self._as_output(m.fn(*_clone(case.args)))
        except Exception:
            return None
        return out if err is None else None

    def _mistake_hint(self, out: Any, case: Case) -> str | None:
        """The hint of the first known mistake whose output equals the reader's on this case."""
        for m in self.mistakes:
            wrong = self._run_mistake(m, case)
            if wrong is not None and self._matches(out, wrong):
                return m.hint
        return None

    def _grade(self, fn: Callable) -> Result:
        if not callable(fn):
            return self._fail(f"pass your function itself (e.g. `check.{self.name}(my_fn)`), "
                              f"not a {type(fn).__name__}.")
        gen = torch.Generator().manual_seed(0)
        cases = self.cases(gen)
        for k, case in enumerate(cases):
            args = _clone(case.args)
            try:
                raw = fn(*args)
            except Exception as e:
                msg = f"your function raised {type(e).__name__}: {e}"
                if self.broadcast_hint and _is_broadcast_error(e):
                    msg += "\n  " + self.broadcast_hint
                return self._fail(msg, case.label)
            if not _same_inputs(args, case.args):
                return self._fail("your function changed its inputs in place; compute a new tensor "
                                  "instead (e.g. `x = x * 2`, not `x *= 2`).", case.label)
            out, err = self._as_output(raw)
            if err:
                return self._fail(err, case.label)
            if k == 0 and self.deterministic:
                try:
                    again, _ = self._as_output(fn(*_clone(case.args)))
                except Exception:
                    again = None
                if again is not None and not self._matches(out, again):
                    return self._fail("your function returns different values for the same inputs. "
                                      "It should not draw random numbers: every random quantity is "
                                      "an argument.", case.label)
            expected = self.reference(*_clone(case.args))
            if not isinstance(expected, tuple) and self.output == "number":
                expected = torch.as_tensor(expected, dtype=torch.float64).reshape(())
            if isinstance(expected, tuple):
                if len(out) != len(expected):
                    return self._fail(f"expected {len(expected)} outputs, got {len(out)}", case.label)
                pairs = list(zip(out, expected))
            else:
                pairs = [(out, expected)]
            for o, e in pairs:
                if o.shape != e.shape:
                    hint = self._mistake_hint(out, case)
                    msg = f"wrong shape: expected {tuple(e.shape)}, got {tuple(o.shape)}."
                    return self._fail(msg + (f" {hint[0].upper()}{hint[1:]}" if hint else ""), case.label)
                if not torch.isfinite(o.double()).all() and torch.isfinite(e.double()).all():
                    return self._fail("your output contains NaN or inf where the answer is finite "
                                      "(a division by zero, or the log or sqrt of a negative number?).",
                                      case.label)
            if self._matches(out, expected):
                continue
            hint = self._mistake_hint(out, case)
            if hint:
                return self._fail(hint, case.label)
            return self._fail(self._generic(out, expected, case), case.label)
        return Result(True, f"Correct: `{self.name}` matches the reference on {len(cases)} test cases.")

    def _generic(self, out: Any, expected: Any, case: Case) -> str:
        if isinstance(expected, tuple):
            for i, (o, e) in enumerate(zip(out, expected)):
                if not _close(o, e, self.rtol, self.atol):
                    return f"output {i} is wrong: expected {_fmt(e)}, got {_fmt(o)}."
        o, e = out.double(), expected.double()
        close = lambda a, b: _close(a, b, self.rtol, max(self.atol, 1e-4))  # noqa: E731
        if e.abs().max() > 1e-6 and close(o, -e):
            return "wrong sign: your output is the negative of the answer."
        if close(o, e.abs().sqrt() * e.sign()) or close(o.abs().sqrt() * o.sign(), e):
            return "off by a square root somewhere: a variance where a standard deviation belongs, or the reverse."
        if e.numel() > 1 and (e.abs() > 1e-8).all() and (o / e).std() < 1e-4 * (o / e).abs().mean():
            return f"off by a constant factor: your output is {(o / e).mean().item():.4g} times the answer."
        if case.t is not None and o.ndim >= 1 and o.shape[0] == case.t.shape[0]:
            rows = [not close(o[i], e[i]) for i in range(o.shape[0])]
            bad_t = sorted({int(case.t[i]) for i, r in enumerate(rows) if r})
            if any(rows) and not all(rows):
                if bad_t == [0]:
                    return ("wrong at t = 0 only (code index 0, the book's first step): check what "
                            "your code does at the first step, e.g. an index t - 1 that wraps to -1.")
                return (f"right for some rows of the batch, wrong for those with t in {bad_t}: "
                        "each example has its own t.")
        err = (o - e).abs()
        i = int(err.flatten().argmax())
        return (f"values differ from the answer (largest error {err.max().item():.3g}, at flat index {i}: "
                f"expected {e.flatten()[i].item():.5g}, got {o.flatten()[i].item():.5g}). "
                f"Try `.hint()`.")


def float64(schedule):
    """The schedule recomputed in float64, so that a reader's float64 arithmetic matches the library's
    to ~1e-12 (in float32, 1 - alpha_bar near t = 0 loses about four digits)."""
    from sfs.schedules import schedule_from_betas
    return schedule_from_betas(schedule.betas.double(), dtype=torch.float64)


def random_t(T: int, B: int, gen: torch.Generator, include: Sequence[int] = (0,)) -> torch.Tensor:
    """B distinct-ish timesteps (B,) in [0, T) that include ``include`` (by default t = 0)."""
    t = torch.randint(0, T, (B,), generator=gen)
    for i, v in enumerate(include):
        t[i] = v
    return t
