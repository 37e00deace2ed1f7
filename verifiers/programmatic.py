"""Generated tasks with exact step checkers: an exact PRM for research.

Contract. Two task families, each a :class:`~ttc.types.Problem` whose ``metadata`` holds
the task (so a verifier can check any trajectory without a model):

* Countdown: ``{"task": "countdown", "numbers": [...], "target": T}``. Each step applies
  one operation to two numbers still available (``"75 - 25 = 50"``); they are replaced
  by the result. Operations: ``+ - * /`` on positive integers, ``-`` only when positive,
  ``/`` only when exact. A move is valid when it follows these rules and the target is
  still reachable from the remaining numbers (searched exactly, memoised).
* Arithmetic chain: ``{"task": "arithmetic_chain", "start": a, "ops": [["+", 5], ...]}``.
  Work step t must apply op t to the previous value, exactly (``"12 * 3 = 36"``).

Step scores (:func:`check_steps_exact`; the :class:`ProgrammaticVerifier`, name
``programmatic``, gives 1.0 for True and 0.0 for False). A step is read for its last
equation ``a op b = c`` (``×``, ``x``, ``÷`` accepted) and for a stated final answer
(``\\boxed{}``, "The answer is"; what strategies take as the answer):

* **Work step** (an equation, no answer): good while every work step so far is valid
  (the rules above). Errors are absorbing, as for a perfect PRM trained on first-error
  labels.
* **Answer step**: scored by the outcome, so a finished trajectory's last score says
  whether its final answer is right. Chain: the answer equals the chain's value, whatever
  the steps before it did. Countdown: the answer is the target and the valid moves so far
  produced it (the target itself is given, so stating it proves nothing). An equation in
  the same step is applied first. Every later step carries the verdict of the latest
  answer (work written after the answer is not part of the solution).
* **Unchecked step** (neither an equation nor an answer): the checker cannot verify it,
  so it is not good (False) before an answer has been stated; it changes no state and
  does not end the trajectory, so later checked steps are scored on their own.

Ended trajectories. Engines keep the step delimiter in a step's text, so a trajectory
whose last step does not end with it (:data:`ttc.types.STEP_DELIMITER`) was ended by the
model (EOS or a length limit) rather than paused at a step boundary. If no step stated an
answer, its last step is scored as an answer step with the answer strategies read from
such a solution: the last number in its text (none: wrong). So a model that stops after
a valid but incomplete chain scores 0.0 at its last step. Limits: with a non-default
``generation.step_delimiter`` every last step reads as ended, and a solution the model
ended with a blank line reads as paused.

It runs no model: ``tokens`` is 0 and ``calls`` counts trajectories.
The tasks themselves (seeded makers and a reference solution) are
:mod:`ttc.evals.tasks`'s.
Must NOT know: models, engines, strategies.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache
from typing import Any, Iterator, Literal, Sequence

from ttc.answers import answer_key, extract_answer
from ttc.registry import VERIFIERS
from ttc.types import STEP_DELIMITER, Frozen, Problem, ScoreOutput, VerifierUsage

__all__ = ["check_steps_exact", "ProgrammaticVerifier", "ProgrammaticConfig", "parse_equation",
           "reachable", "moves", "apply_op", "task_meta"]

_EQ = re.compile(r"(-?\d+)\s*([+\-*/×x÷])\s*(-?\d+)\s*=\s*(-?\d+)")
_OPS = {"×": "*", "x": "*", "÷": "/"}


def parse_equation(step: str) -> tuple[int, str, int, int] | None:
    """The last ``a op b = c`` in a step, or None."""
    found = _EQ.findall(step)
    if not found:
        return None
    a, op, b, c = found[-1]
    return int(a), _OPS.get(op, op), int(b), int(c)


def apply_op(a: int, op: str, b: int) -> Fraction:
    if op == "+":
        return Fraction(a + b)
    if op == "-":
        return Fraction(a - b)
    if op == "*":
        return Fraction(a * b)
    return Fraction(a, b) if b else Fraction(-10**18)


# -- Countdown -----------------------------------------------------------------------------
def moves(numbers: tuple[int, ...]) -> Iterator[tuple[int, str, int, int, tuple[int, ...]]]:
    """Every legal move on ``numbers``: ``(a, op, b, result, numbers after)`` (``+`` and
    ``*`` once per pair)."""
    n = len(numbers)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            a, b = numbers[i], numbers[j]
            rest = [numbers[k] for k in range(n) if k not in (i, j)]
            for op in "+-*/":
                if op in "+*" and i > j:
                    continue
                v = apply_op(a, op, b)
                if v.denominator != 1 or v <= 0:
                    continue
                yield a, op, b, int(v), tuple(sorted(rest + [int(v)]))


@lru_cache(maxsize=1 << 16)
def reachable(numbers: tuple[int, ...], target: int) -> bool:
    return target in numbers or any(reachable(after, target)
                                    for *_, after in moves(numbers))


# -- checking ------------------------------------------------------------------------------
def task_meta(problem: Problem) -> dict[str, Any]:
    meta = problem.metadata or {}
    task = meta.get("task")
    if task not in ("countdown", "arithmetic_chain"):
        raise ValueError(f"problem {problem.id!r} is not a generated task (metadata.task is "
                         f"{task!r}; expected 'countdown' or 'arithmetic_chain').")
    return meta


def check_steps_exact(problem: Problem, steps: Sequence[str]) -> list[bool]:
    """Per step: is it good? (the rules in the module docstring)."""
    meta = task_meta(problem)
    if meta["task"] == "countdown":
        return _check_countdown(meta, steps)
    return _check_chain(meta, steps)


def _same_number(answer: str, value: int) -> bool:
    return answer_key(answer) == answer_key(str(value))


def _answer_in(steps: Sequence[str], i: int) -> str | None:
    """The final answer step ``i`` states, or None. The last step of an ended trajectory
    (see the module docstring) answers the whole text's last number ("" if it has none)."""
    found = extract_answer(steps[i])
    if found is not None or i < len(steps) - 1 or steps[i].endswith(STEP_DELIMITER):
        return found
    whole = extract_answer("".join(steps), fallback_last_number=True)
    return "" if whole is None else whole


def _check_countdown(meta: dict[str, Any], steps: Sequence[str]) -> list[bool]:
    pool = sorted(int(x) for x in meta["numbers"])
    target = int(meta["target"])
    out: list[bool] = []
    valid = True                   # every move so far followed the rules (absorbing)
    answered: bool | None = None   # verdict of the latest stated answer, once there is one
    for i, step in enumerate(steps):
        eq, final = parse_equation(step), _answer_in(steps, i)
        if answered is None and eq is not None and valid:
            a, op, b, c = eq
            rest = list(pool)
            ok = apply_op(a, op, b) == c and c > 0
            for x in (a, b):
                if ok and x in rest:
                    rest.remove(x)
                else:
                    ok = False
            if ok:
                pool = sorted(rest + [c])
            valid = ok and reachable(tuple(pool), target)
        if final is not None:
            answered = valid and _same_number(final, target) and target in pool
        out.append(answered if answered is not None else (valid and eq is not None))
    return out


def _check_chain(meta: dict[str, Any], steps: Sequence[str]) -> list[bool]:
    value = int(meta["start"])
    ops = [(o, int(b)) for o, b in meta["ops"]]
    result = value
    for op, b in ops:
        result = int(apply_op(result, op, b))
    out: list[bool] = []
    valid, done = True, 0
    answered: bool | None = None
    for i, step in enumerate(steps):
        eq, final = parse_equation(step), _answer_in(steps, i)
        if answered is None and eq is not None and valid:
            a, op, b, c = eq
            valid = done < len(ops) and (a, op, b) == (value, *ops[done]) \
                and apply_op(a, op, b) == c
            if valid:
                value, done = c, done + 1
        if final is not None:
            answered = _same_number(final, result)
        out.append(answered if answered is not None else (valid and eq is not None))
    return out


class ProgrammaticConfig(Frozen):
    name: Literal["programmatic"] = "programmatic"


class ProgrammaticVerifier:
    """Exact 0/1 step scores for generated tasks; runs no model."""

    incremental = True

    def score(self, problem: Problem, trajectories: Sequence[Sequence[str]]) -> ScoreOutput:
        from ttc.verifiers.prm_core import check_steps

        check_steps(trajectories)
        scores = tuple(tuple(1.0 if ok else 0.0 for ok in check_steps_exact(problem, steps))
                       for steps in trajectories)
        return ScoreOutput(scores=scores, usage=VerifierUsage(calls=len(trajectories)))


@VERIFIERS.register(ProgrammaticConfig)
def build_programmatic(config: ProgrammaticConfig, **_: object) -> ProgrammaticVerifier:
    return ProgrammaticVerifier()
