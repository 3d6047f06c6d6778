"""The grading core: run a reader's function on fixed inputs, compare with a reference, explain.

An ``Exercise`` holds a reference implementation (usually the ``sfs`` function the chapter
builds), a few input cases, a list of known ``Mistake`` variants (beta instead of sqrt(beta),
alpha instead of alpha_bar, no broadcast over the batch, ...) and a readable ``solution``.
Calling it on the reader's function prints either "Correct" or a hint that says what is wrong;
it never raises, whatever the reader's code does. ``grade`` returns the same verdict as a
``Result`` (the tests assert on its message).

Every call of the reader's function gets its own deep copy of every argument (the schedule
included) and runs under a time limit (``sfs.exercises.running``), so an in-place edit can neither
pass nor corrupt the reference, and an endless loop ends with a hint instead of a hung cell.

The diagnosis, first match wins. Steps 1-3 stop at the first case that shows the problem:
1. the function raised (its exception, plus the broadcasting hint for PyTorch's shape mismatch),
   or ran past the time limit;
2. it modified an input in place, or returned None or something that is not the expected kind
   (the message names the type and shape it got);
3. it gave different answers for the same inputs (random numbers, or state kept between calls).
Then, with the outputs of every case in hand, a hint names a mistake only if the evidence of every
case singles it out:
4. wrong shape (with a known mistake's hint when that mistake has the same output on every case);
5. a known mistake with the same output as the reader's on every case;
6. NaN or inf where the answer is finite;
7. generic patterns that must hold on every case and explain the output at least ten times better
   than the answer does: one t for the whole batch, the negative of the answer, its square or
   square root, a constant factor (not close to 1);
8. close but outside the tolerance: the largest relative error, and the dtype when float16 or
   float32 rounding is a likely cause;
9. wrong only in the rows with t = 0;
10. otherwise neutral: the largest error and where it is.
"""

from __future__ import annotations

import copy
import inspect
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from sfs.exercises.running import TimeLimitExceeded, call_with_time_limit, describe, input_change

TIME_LIMIT = 5.0  # seconds per call of the reader's function; each exercise's takes milliseconds


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
    (the same tensor object as the timestep argument: used to say "wrong at t = 0" and to test
    "one t for the whole batch"); ``label`` says in words what the case is; ``boundary`` marks a
    case at the edge of the valid inputs (T = 1, eta = 0, alpha_bar_prev = 1, ...), which every
    exercise must have (tests/test_exercises.py)."""

    args: tuple
    label: str = ""
    t: torch.Tensor | None = None
    boundary: bool = False


@dataclass
class Mistake:
    """A plausible wrong answer, written as a function with the reference's signature."""

    fn: Callable
    hint: str


# -- comparing tensors --------------------------------------------------------------------------

def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> bool:
    """|a - b| <= atol + rtol |b| everywhere b is finite; where b is inf or NaN, a must equal it."""
    if a.shape != b.shape:
        return False
    a, b = a.double(), b.double()
    fin = torch.isfinite(b)
    if not fin.all():
        if not (torch.equal(torch.isnan(a[~fin]), torch.isnan(b[~fin]))
                and torch.equal(torch.nan_to_num(a[~fin]), torch.nan_to_num(b[~fin]))):
            return False
    a, b = a[fin], b[fin]
    return bool(torch.isfinite(a).all() and ((a - b).abs() <= atol + rtol * b.abs()).all())


def _rel_err(o: torch.Tensor, e: torch.Tensor, atol: float) -> tuple[float, int]:
    """Largest relative error max |o - e| / max(|e|, floor) over finite entries and its flat index;
    the floor (1e-3 of the largest |e|, plus atol) keeps entries where the answer is 0 from
    dominating."""
    o, e = o.double().flatten(), e.double().flatten()
    fin = torch.isfinite(e) & torch.isfinite(o)
    if not fin.any():
        return float("inf"), 0
    floor = 1e-3 * e[fin].abs().max() + atol
    rel = torch.where(fin, (o - e).abs() / torch.maximum(e.abs(), floor), torch.zeros_like(o))
    i = int(rel.argmax())
    return float(rel[i]), i


def _index(flat: int, shape: torch.Size) -> str:
    """Flat index -> "(i, j, ...)", the position a reader can index with."""
    if len(shape) == 0:
        return "()"
    idx = []
    for n in reversed(shape):
        flat, r = divmod(flat, n)
        idx.append(r)
    return "(" + ", ".join(str(i) for i in reversed(idx)) + (",)" if len(idx) == 1 else ")")


def _is_broadcast_error(e: BaseException) -> bool:
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
    mistakes: known wrong variants, each with the hint shown when the reader's output matches it
    on every case.
    solution: a readable correct implementation whose source ``solution()`` prints.
    output: "tensor" (a torch.Tensor is required), "number" (a float, int or one-element tensor or
    array) or "tensors" (a tuple of tensors, e.g. a mean and a covariance; ``output_names`` names
    them in hints).
    rtol, atol: the tolerance, |out - answer| <= atol + rtol |answer|; never tighter than float32
    arithmetic on the cases (tests/test_exercises.py runs every solution in float32).
    may_modify: indices of arguments the reader may update in place (an EMA), if it also returns
    the result. time_limit: seconds per call (None: no limit).
    """

    def __init__(self, name: str, reference: Callable, cases: Callable[[torch.Generator], list[Case]],
                 solution: Callable, hint: str, mistakes: Sequence[Mistake] = (),
                 output: str = "tensor", rtol: float = 1e-4, atol: float = 1e-5,
                 broadcast_hint: str | None = BROADCAST_HINT, deterministic: bool = True,
                 output_names: Sequence[str] | None = None, may_modify: Sequence[int] = (),
                 time_limit: float | None = TIME_LIMIT):
        if output not in ("tensor", "number", "tensors"):
            raise ValueError(f"output must be 'tensor', 'number' or 'tensors', got {output!r}")
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
        self.output_names = tuple(output_names) if output_names else None
        self.may_modify = tuple(may_modify)
        self.time_limit = time_limit
        try:
            self.arg_names = list(inspect.signature(solution).parameters)
        except (TypeError, ValueError):
            self.arg_names = []
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

    def _arg_name(self, i: int) -> str:
        return self.arg_names[i] if i < len(self.arg_names) else f"argument {i}"

    def _expected(self, case: Case) -> Any:
        """The reference's answer: a tensor (0-d float64 for numbers) or a tuple of tensors."""
        e = self.reference(*copy.deepcopy(case.args))
        if isinstance(e, tuple):
            return tuple(torch.as_tensor(v).detach().cpu() for v in e)
        if self.output == "number":
            return torch.as_tensor(e, dtype=torch.float64).detach().cpu().reshape(())
        return torch.as_tensor(e).detach().cpu()

    def _as_output(self, out: Any, expected: Any) -> tuple[Any, str | None]:
        """Coerce an output to the expected kind, or say in words why it cannot be."""
        if out is None:
            return None, "your function returned None. Did you forget `return`?"
        if self.output == "number":
            return self._as_number(out)
        if self.output == "tensors":
            n = len(expected)
            names = f" ({', '.join(self.output_names)})" if self.output_names else ""
            if not isinstance(out, (tuple, list)):
                return None, f"expected a tuple of {n} tensors{names}, got {describe(out)}"
            if len(out) != n:
                return None, f"expected {n} outputs{names}, got {len(out)}"
            items = []
            for i, (o, e) in enumerate(zip(out, expected)):
                v, err = self._as_tensor(o, e)
                if err:
                    return None, f"output {i}{self._out_name(i)}: {err}"
                items.append(v)
            return tuple(items), None
        return self._as_tensor(out, expected)

    def _out_name(self, i: int) -> str:
        return f" ({self.output_names[i]})" if self.output_names and i < len(self.output_names) else ""

    @staticmethod
    def _as_tensor(out: Any, expected: torch.Tensor) -> tuple[torch.Tensor | None, str | None]:
        want = f"a torch.Tensor of shape {tuple(expected.shape)}"
        if out is None:
            return None, f"expected {want}, got None"
        if not isinstance(out, torch.Tensor):
            if type(out).__module__.split(".")[0] == "numpy" or isinstance(out, (list, tuple)):
                how = " Convert it with torch.as_tensor(...)."
            else:
                how = ""
            return None, f"expected {want}, got {describe(out)}.{how}"
        if out.is_complex():
            return None, f"expected real values, got a complex tensor ({out.dtype})"
        return out.detach().cpu(), None

    @staticmethod
    def _as_number(out: Any) -> tuple[torch.Tensor | None, str | None]:
        if isinstance(out, bool) or isinstance(out, (str, bytes, complex)):
            return None, f"expected a single number, got {describe(out)}"
        if isinstance(out, torch.Tensor):
            if out.numel() != 1:
                return None, f"expected a single number, got a tensor of shape {tuple(out.shape)}"
            if out.is_complex():
                return None, f"expected a real number, got a complex tensor ({out.dtype})"
            return out.detach().cpu().reshape(()), None
        if isinstance(out, (int, float)):
            return torch.tensor(float(out), dtype=torch.float64), None
        if type(out).__module__.split(".")[0] == "numpy":
            size = getattr(out, "size", 1)
            if size != 1:
                return None, f"expected a single number, got {describe(out)}"
            try:
                t = torch.as_tensor(out.reshape(()) if hasattr(out, "reshape") else out)
            except Exception:
                return None, f"expected a single number, got {describe(out)}"
            if t.is_complex() or t.dtype == torch.bool:
                return None, f"expected a real number, got {describe(out)} of dtype {getattr(out, 'dtype', '?')}"
            return t.reshape(()), None
        return None, f"expected a single number, got {describe(out)}"

    def _matches(self, out: Any, expected: Any) -> bool:
        if isinstance(expected, tuple):
            return (isinstance(out, tuple) and len(out) == len(expected)
                    and all(_close(o, e, self.rtol, self.atol) for o, e in zip(out, expected)))
        return isinstance(out, torch.Tensor) and _close(out, expected, self.rtol, self.atol)

    def _run_trusted(self, fn: Callable, case: Case, expected: Any) -> Any:
        """Output of a known mistake (or of the reference on modified inputs), or None if it fails."""
        try:
            out, err = self._as_output(fn(*copy.deepcopy(case.args)), expected)
        except Exception:
            return None
        return None if err else out

    # -- step 1-3: run the reader's function on every case ------------------------------------
    def _call(self, fn: Callable, case: Case) -> tuple[Any, str | None]:
        """(raw output, None) or (None, the failure message) for one call on fresh copies."""
        args = copy.deepcopy(case.args)
        try:
            raw = call_with_time_limit(fn, args, self.time_limit)
        except TimeLimitExceeded:
            return None, (f"your function did not return within {self.time_limit:g} s, so it was "
                          "stopped. An endless loop? (a `while` whose condition never changes, or a "
                          "loop that grows what it iterates over). A correct answer takes milliseconds.")
        except Exception as e:
            msg = f"your function raised {type(e).__name__}: {e}"
            if self.broadcast_hint and _is_broadcast_error(e):
                msg += "\n  " + self.broadcast_hint
            return None, msg
        for i, (before, after) in enumerate(zip(case.args, args)):
            name = self._arg_name(i)
            where = input_change(before, after, name)
            if where and i not in self.may_modify:
                detail = f" (`{where}` changed)" if where != name else ""
                return None, (f"your function modified its input `{name}` in place{detail}. Compute "
                              "new tensors instead (e.g. `x = x * 2`, not `x *= 2`; `.clone()` a tensor "
                              "before editing it).")
            if where and raw is None:
                return None, (f"you updated `{name}` in place but returned None: return the result "
                              f"too (e.g. `return {name}`).")
        return raw, None

    def _grade(self, fn: Callable) -> Result:
        if not callable(fn):
            return self._fail(f"pass your function itself (e.g. `check.{self.name}(my_fn)`), "
                              f"not {describe(fn)}.")
        cases = self.cases(torch.Generator().manual_seed(0))
        outs, exps = [], []
        for case in cases:
            expected = self._expected(case)
            raw, err = self._call(fn, case)
            if err:
                return self._fail(err, case.label)
            out, err = self._as_output(raw, expected)
            if err:
                return self._fail(err, case.label)
            if self.deterministic:
                raw2, err2 = self._call(fn, case)
                again = None if err2 else self._as_output(raw2, expected)[0]
                if err2 or again is None or not _same_output(out, again):
                    why = f" (the second call: {err2.removeprefix('your function ')})" if err2 else ""
                    return self._fail("your function returns different results for the same inputs"
                                      f"{why}. It should not draw random numbers (every random quantity "
                                      "is an argument) or keep state between calls.", case.label)
            outs.append(out)
            exps.append(expected)
        if all(self._matches(o, e) for o, e in zip(outs, exps)):
            return Result(True, f"Correct: `{self.name}` matches the reference on {len(cases)} test cases.")
        return self._diagnose(cases, outs, exps)

    # -- steps 4-10: explain a wrong answer from the evidence of every case ---------------------
    def _known_mistakes(self, cases, outs, exps) -> list[str]:
        """Hints of the known mistakes whose output equals the reader's on every case (and differs
        from the answer on at least one)."""
        hints = []
        for m in self.mistakes:
            wrongs = [self._run_trusted(m.fn, c, e) for c, e in zip(cases, exps)]
            if all(w is not None and self._matches(o, w) for o, w in zip(outs, wrongs)) and \
                    any(not self._matches(w, e) for w, e in zip(wrongs, exps)):
                if m.hint not in hints:
                    hints.append(m.hint)
        return hints

    def _diagnose(self, cases, outs, exps) -> Result:
        tuple_out = isinstance(exps[0], tuple)
        comps = range(len(exps[0])) if tuple_out else [None]
        pick = (lambda x, j: x[j]) if tuple_out else (lambda x, j: x)
        bad = [k for k, (o, e) in enumerate(zip(outs, exps)) if not self._matches(o, e)]
        first = cases[bad[0]].label
        known = self._known_mistakes(cases, outs, exps)
        either = " Or: ".join(known)                     # several only if they agree on every case
        hint = f" {either[0].upper()}{either[1:]}" if known else ""

        # 4. wrong shape
        for k, (o, e) in enumerate(zip(outs, exps)):
            for j in comps:
                oj, ej = pick(o, j), pick(e, j)
                if oj.shape != ej.shape:
                    what = f"output {j}{self._out_name(j)} has the wrong shape" if tuple_out else "wrong shape"
                    return self._fail(f"{what}: expected {tuple(ej.shape)}, got {tuple(oj.shape)}.{hint}",
                                      cases[k].label)
        # 5. a known mistake on every case
        if known:
            return self._fail(either, first)
        # 6. NaN or inf
        for k, (o, e) in enumerate(zip(outs, exps)):
            for j in comps:
                oj, ej = pick(o, j).double(), pick(e, j).double()
                if (~torch.isfinite(oj) & torch.isfinite(ej)).any():
                    return self._fail("your output contains NaN or inf where the answer is finite "
                                      "(a division by zero, or the log or sqrt of a negative number?).",
                                      cases[k].label)
        # the first output (of a tuple) that is wrong somewhere is the one explained below
        j = next(j for j in comps if any(not _close(pick(o, j), pick(e, j), self.rtol, self.atol)
                                         for o, e in zip(outs, exps)))
        prefix = f"output {j}{self._out_name(j)} is wrong: " if tuple_out else ""
        os_, es = [pick(o, j) for o in outs], [pick(e, j) for e in exps]
        msg = self._patterns(cases, os_, es, tuple_out)
        if msg:
            return self._fail(prefix + msg, first)
        msg, label = self._near_miss(cases, os_, es)
        if msg:
            return self._fail(prefix + msg, label)
        msg = self._t0_only(cases, os_, es)
        if msg:
            return self._fail(prefix + msg, first)
        k = next(k for k in range(len(cases)) if not _close(os_[k], es[k], self.rtol, self.atol))
        return self._fail(prefix + self._neutral(cases[k], os_[k], es[k]), cases[k].label)

    def _fits(self, os_, es, alts) -> bool:
        """The reader's output equals ``alts`` (one candidate tensor per case) on every case, and
        where it misses the answer, the candidate explains it at least 10x better."""
        decisive = False
        for o, e, a in zip(os_, es, alts):
            if a is None or a.shape != o.shape or not _close(o, a, self.rtol, self.atol):
                return False
            if not _close(o, e, self.rtol, self.atol):
                miss = (o.double() - e.double()).abs().nan_to_num(posinf=1e300).max()
                if (o.double() - a.double()).abs().nan_to_num(posinf=1e300).max() > 0.1 * miss:
                    return False
                decisive = True
        return decisive

    def _patterns(self, cases, os_, es, tuple_out) -> str | None:
        fin = all(torch.isfinite(e.double()).all() for e in es)
        # one t for the whole batch: the answer with every row's t set to one of the batch's values
        if not tuple_out and any(c.t is not None for c in cases):
            alts = []
            for c, o, e in zip(cases, os_, es):
                if c.t is None:
                    alts.append(e)
                    continue
                found = None
                for v in sorted(set(c.t.tolist())):
                    a = self._reference_with_t(c, v, e)
                    if a is not None and a.shape == o.shape and _close(o, a, self.rtol, self.atol):
                        found = a
                        break
                alts.append(found)
            if self._fits(os_, es, alts):
                return ("you used one t for the whole batch (each row's output is the answer at one "
                        "shared t): each example has its own t. Gather the schedule at t (shape (B,)) and "
                        "reshape it to (B, 1, ..., 1).")
        if not fin:
            return None
        if self._fits(os_, es, [-e.double() for e in es]):
            return "wrong sign: your output is the negative of the answer, on every case."
        if self._fits(os_, es, [e.double().abs().sqrt() * e.double().sign() for e in es]):
            return ("your output is the square root of the answer, on every case: a standard deviation "
                    "where a variance belongs?")
        if self._fits(os_, es, [e.double() * e.double().abs() for e in es]):
            return ("your output is the square of the answer, on every case: a variance where a "
                    "standard deviation belongs?")
        ratios = []
        for o, e in zip(os_, es):
            e2 = (e.double() ** 2).sum()
            if e2 > 0:
                ratios.append(float((o.double() * e.double()).sum() / e2))
        if ratios:
            c = sum(ratios) / len(ratios)
            if abs(c - 1) > 1e-2 and abs(c + 1) > 1e-2 and abs(c) > 1e-3 and \
                    self._fits(os_, es, [c * e.double() for e in es]):
                return f"off by a constant factor: your output is {c:.4g} times the answer, on every case."
        return None

    def _reference_with_t(self, case: Case, v: int, expected: Any) -> torch.Tensor | None:
        """The answer with every entry of the case's t replaced by v."""
        idx = [i for i, a in enumerate(case.args) if a is case.t]
        if not idx:
            return None
        args = list(copy.deepcopy(case.args))
        args[idx[0]] = torch.full_like(case.t, v)
        try:
            out, err = self._as_output(self.reference(*args), expected)
        except Exception:
            return None
        return None if err or isinstance(out, tuple) else out

    def _near_miss(self, cases, os_, es) -> tuple[str | None, str]:
        """Within 1% of the answer on every case, or, for a float16 / bfloat16 output, within 16
        rounding units of that dtype (relative to each case's largest value)."""
        rels = [_rel_err(o, e, self.atol) for o, e in zip(os_, es)]
        low = (torch.float16, torch.bfloat16)
        near = all(rel < 1e-2 for rel, _ in rels)
        if not near and all(o.dtype in low for o in os_):
            u = 16 * torch.finfo(os_[0].dtype).eps
            near = all(_close(o, e, u, u * float(e.double().abs().max())) for o, e in zip(os_, es))
        if not near:
            return None, ""
        k = max(range(len(rels)), key=lambda k: rels[k][0])
        (worst, i), o, e = rels[k], os_[k], es[k]
        at = "" if o.ndim == 0 else f" at index {_index(i, o.shape)}"
        msg = (f"close, but outside the tolerance: largest relative error {worst:.2g}{at} (expected "
               f"{e.double().flatten()[i].item():.7g}, got {o.double().flatten()[i].item():.7g}); the "
               f"tolerance is {self.rtol:g} relative.")
        if o.dtype in low:
            msg += (f" Your output is {o.dtype}, which keeps about 3 significant digits: compute in "
                    "float32 or float64 (the inputs' dtype).")
        elif o.dtype == torch.float32 and e.dtype == torch.float64:
            msg += (" Your output is float32 while the answer is float64: float32 rounding (about 7 "
                    "digits, fewer after a subtraction such as 1 - alpha_bar) may be the difference. "
                    "Keep the inputs' dtype (`torch.tensor` of Python floats is float32).")
        elif worst < 1e-4:
            msg += (" That is the size of float32 rounding: does a step of your computation use float32 "
                    "(a `.float()`, or `torch.tensor` of Python floats)? Check the dtype of the "
                    "intermediate tensors.")
        return msg, cases[k].label

    def _t0_only(self, cases, os_, es) -> str | None:
        """Wrong exactly in the rows with t = 0, on every case that has them; right elsewhere."""
        seen_bad = False
        for c, o, e in zip(cases, os_, es):
            if c.t is None or o.ndim == 0 or o.shape[0] != c.t.shape[0]:
                if not _close(o, e, self.rtol, self.atol):
                    return None
                continue
            for i in range(o.shape[0]):
                ok = _close(o[i], e[i], self.rtol, self.atol)
                if int(c.t[i]) == 0:
                    seen_bad |= not ok
                elif not ok:
                    return None
        if not seen_bad:
            return None
        return ("wrong only in the rows with t = 0 (code index 0, the book's first step), right for every "
                "other t: check what your code does at the first step (an index t - 1 that wraps around "
                "to -1, for example).")

    def _neutral(self, case: Case, o: torch.Tensor, e: torch.Tensor) -> str:
        od, ed = o.double(), e.double()
        same = (od == ed) | (torch.isnan(od) & torch.isnan(ed))          # equal, inf and NaN included
        err = torch.where(same, torch.zeros_like(od), (od - ed).abs().nan_to_num(nan=float("inf")))
        i = int(err.flatten().argmax())
        rel, _ = _rel_err(o, e, self.atol)
        at = "" if o.ndim == 0 else f" at index {_index(i, o.shape)}"
        msg = (f"values differ from the answer (largest error {err.max().item():.3g}{at}: expected "
               f"{ed.flatten()[i].item():.5g}, got {od.flatten()[i].item():.5g}; largest relative error "
               f"{rel:.3g}).")
        if case.t is not None and o.ndim >= 1 and o.shape[0] == case.t.shape[0]:
            rows = [_close(o[r], e[r], self.rtol, self.atol) for r in range(o.shape[0])]
            if any(rows):
                good = sorted({int(case.t[r]) for r in range(len(rows)) if rows[r]})
                wrong = sorted({int(case.t[r]) for r in range(len(rows)) if not rows[r]})
                msg += f" Rows with t in {good} are right, rows with t in {wrong} are not."
        return msg + " Try `.hint()`."


def _same_output(a: Any, b: Any) -> bool:
    """Two outputs of the same call on equal inputs: equal up to float noise of nondeterministic
    kernels (1e-6 relative), any NaN in the same places."""
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(_same_output(u, v) for u, v in zip(a, b))
    return isinstance(b, torch.Tensor) and _close(a, b, 1e-6, 1e-12)


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
