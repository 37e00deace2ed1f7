"""Generated problem sets: the simulated backend's problems, Countdown and arithmetic chains.

Contract: seeded, deterministic makers of :class:`~ttc.types.Problem` lists, the ones
``ttc eval dataset=sim_hard|countdown|arithmetic_chain`` and
:func:`ttc.evals.datasets.load_problems` use:

* :func:`make_problems`: problems for the simulated backend (``metadata.difficulty`` and
  ``num_steps`` are what :mod:`ttc.engine.backends.simulated` reads);
* :func:`countdown_problem`, :func:`arithmetic_chain_problem`: tasks whose ``metadata``
  holds the task, so the ``programmatic`` verifier (:mod:`ttc.verifiers.programmatic`, where
  the rules are written) checks every step exactly; :func:`reference_steps` solves them.
Must NOT know: models, engines, strategies.
"""

from __future__ import annotations

import random

from ttc.types import Problem
from ttc.verifiers.programmatic import apply_op, moves, reachable, task_meta


# -- simulated ------------------------------------------------------------------------------
def make_problems(n: int, *, seed: int = 0, difficulty: float | tuple[float, float] = (0.0, 1.0),
                  prefix: str = "sim") -> list[Problem]:
    """``n`` simulated problems with difficulties uniform in a range (or fixed)."""
    if n <= 0:
        raise ValueError(f"n must be a positive integer; got {n!r}.")
    rng = random.Random(seed)
    problems = []
    for i in range(n):
        d = difficulty if isinstance(difficulty, float | int) else rng.uniform(*difficulty)
        problems.append(Problem(id=f"{prefix}-{seed}-{i}",
                                question=f"Simulated problem {i} (seed {seed}).",
                                answer=str(100 + rng.randint(0, 899)),
                                metadata={"difficulty": round(float(d), 4),
                                          "num_steps": 3 + rng.randint(0, 4)}))
    return problems


# -- Countdown ----------------------------------------------------------------------------
def countdown_problem(seed: int, *, n_numbers: int = 4, max_number: int = 25,
                      target_range: tuple[int, int] = (10, 200)) -> Problem:
    """A solvable Countdown instance (deterministic in ``seed``)."""
    if n_numbers < 2:
        raise ValueError(f"n_numbers must be at least 2; got {n_numbers!r}.")
    rng = random.Random(seed)
    while True:
        nums = [rng.randint(1, max_number) for _ in range(n_numbers)]
        target = rng.randint(*target_range)
        if target not in nums and reachable(tuple(sorted(nums)), target):
            break
    q = (f"Using the numbers {', '.join(map(str, nums))}, each at most once, and the "
         f"operations +, -, *, / (exact division, positive results), reach {target}. "
         f"Write one operation per step as 'a op b = c'.")
    return Problem(id=f"countdown-{seed}", question=q, answer=str(target),
                   metadata={"task": "countdown", "numbers": nums, "target": target})


def _countdown_solution(numbers: tuple[int, ...], target: int) -> list[str] | None:
    if target in numbers:
        return []
    for a, op, b, value, after in moves(numbers):
        if reachable(after, target):
            tail = _countdown_solution(after, target)
            if tail is not None:
                return [f"{a} {op} {b} = {value}"] + tail
    return None


# -- Arithmetic chains ---------------------------------------------------------------------
def arithmetic_chain_problem(seed: int, *, length: int = 5, max_operand: int = 12) -> Problem:
    """Start from a number and apply ``length`` operations (integer results only)."""
    if length < 1:
        raise ValueError(f"length must be a positive integer; got {length!r}.")
    rng = random.Random(seed)
    start = rng.randint(2, 20)
    value, ops = start, []
    for _ in range(length):
        op = rng.choice("+-*/")
        if op == "/":
            divisors = [d for d in range(2, max_operand + 1) if value % d == 0]
            if not divisors:
                op = "+"
            else:
                b = rng.choice(divisors)
        if op != "/":
            b = rng.randint(2, max_operand)
        ops.append([op, b])
        value = int(apply_op(value, op, b))
    words = {"+": "add", "-": "subtract", "*": "multiply by", "/": "divide by"}
    q = (f"Start with {start}. Then " + ", then ".join(f"{words[o]} {b}" for o, b in ops)
         + ". What is the result? Write one operation per step as 'a op b = c'.")
    return Problem(id=f"chain-{seed}", question=q, answer=str(value),
                   metadata={"task": "arithmetic_chain", "start": start, "ops": ops})


def reference_steps(problem: Problem) -> list[str]:
    """A correct step-by-step solution (each step ends with the step delimiter)."""
    meta = task_meta(problem)
    if meta["task"] == "countdown":
        steps = _countdown_solution(tuple(sorted(meta["numbers"])), int(meta["target"])) or []
    else:
        value, steps = int(meta["start"]), []
        for op, b in meta["ops"]:
            new = int(apply_op(value, op, int(b)))
            steps.append(f"{value} {op} {b} = {new}")
            value = new
    return [s + "\n\n" for s in steps] + [f"The answer is \\boxed{{{problem.answer}}}."]
