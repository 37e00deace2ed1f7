"""One problem solved into one eval record (a local run and a Ray actor write the same).

Contract: :func:`solve_to_record` solves a problem with a pipeline and returns its record;
a failure of the problem becomes a failed record (its error in one line), a fault of the
machine or network (:func:`ttc.faults.stops_the_run`) is raised. The record fields are
listed in :mod:`ttc.evals.runner`. Peak KV: with an engine whose page pool measures
windows (``pool.open_window``), ``ledger.peak_kv_bytes`` is the most KV bytes resident
while the problem ran.
Must NOT know: strategy internals, the results file, Hydra.
"""

from __future__ import annotations

import time
from typing import Any

from ttc.config import RunConfig
from ttc.evals.grading import grader_name, is_correct, ungradable
from ttc.faults import describe, stops_the_run
from ttc.types import Problem, Result


def make_record(problem: Problem, index: int, result: Result, *, dataset: str, seed: int,
                wall: float, save_tree: bool) -> dict[str, Any]:
    answers = [c.answer for c in result.candidates]
    record = {
        "id": problem.id, "index": index, "gold": problem.answer, "answer": result.answer,
        "correct": is_correct(problem.answer, result.answer),
        "ungradable": ungradable(problem.answer),     # None, or why the gold cannot be graded
        "strategy": result.strategy, "dataset": dataset, "seed": seed,
        "grader": grader_name(),
        "candidate_answers": answers,
        "candidate_correct": [is_correct(problem.answer, a) for a in answers],
        "candidate_scores": [c.score for c in result.candidates],
        "ledger": result.ledger.model_dump(mode="json"),
        "budget_exhausted": result.budget_exhausted,
        "wall_seconds": round(wall, 6),
    }
    if save_tree:
        record["tree"] = result.tree
    return record


def failed_record(problem: Problem, index: int, err: BaseException, *, strategy: str,
                  dataset: str, seed: int, wall: float) -> dict[str, Any]:
    """The record of a problem whose solve raised: its error in one line, no answer."""
    return {"id": problem.id, "index": index, "gold": problem.answer, "answer": None,
            "correct": None, "strategy": strategy, "dataset": dataset, "seed": seed,
            "error": describe(err), "error_type": type(err).__name__,
            "wall_seconds": round(wall, 6)}


def solve_to_record(pipe: Any, problem: Problem, index: int, *, config: RunConfig,
                    dataset: str, save_tree: bool) -> dict[str, Any]:
    """Solve one problem into its record; a failure of the problem becomes a failed record,
    a fault of the machine or network (:func:`ttc.faults.stops_the_run`) is raised."""
    window = _kv_window(pipe.generator)
    t0 = time.perf_counter()
    try:
        result = pipe.solve(problem)
    except BaseException as err:
        if window is not None:
            window.close()
        if stops_the_run(err):
            raise
        return failed_record(problem, index, err, strategy=config.strategy.name,
                             dataset=dataset, seed=config.generation.seed,
                             wall=time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    record = make_record(problem, index, result, dataset=dataset,
                         seed=config.generation.seed, wall=wall, save_tree=save_tree)
    if window is not None:
        record["ledger"]["peak_kv_bytes"] = window.close()
    return record


class _KVWindow:
    """The most KV bytes resident in an engine's page pool while one problem runs."""

    def __init__(self, pool: Any, bytes_per_page: int) -> None:
        self.pool, self.bytes_per_page = pool, bytes_per_page
        self.wid = pool.open_window()

    def close(self) -> int:
        return self.pool.close_window(self.wid) * self.bytes_per_page


def _kv_window(generator: Any) -> _KVWindow | None:
    pool = getattr(generator, "pool", None)
    page_bytes = getattr(pool, "page_bytes", 0)
    if pool is None or not hasattr(pool, "open_window") or not page_bytes:
        return None                  # the engine's own high-water mark stays in the ledger
    return _KVWindow(pool, page_bytes)
