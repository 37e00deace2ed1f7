"""Distributed evals on Ray: ``ttc eval ... executor=ray`` shards problems over Ray actors.

Contract: :func:`run_on_ray` takes the validated run config, the problems still to do
(``(index, problem)`` pairs) and an ``accept(record)`` callback, and returns when every
problem is done. It starts ``workers`` Ray actors (``concurrency`` of the eval; each
actor builds one engine, or a client of shared servers when the backend is ``http``)
and hands out problems dynamically, two in flight per actor: an actor runs them on two
threads over its one engine (:mod:`ttc.sharing`), so on the native engine both problems'
branches decode in the same batch, and a slow problem does not hold back a shard.
Cores: each actor asks Ray for ``num_cpus=1`` and its native engine runs one torch
thread (``backend.threads=1``), so N actors on N cores never oversubscribe them. Each
record is made on the worker with the runner's own
:func:`~ttc.evals.records.solve_to_record` (the same JSONL format as a local run, failed
records included) and passed to ``accept`` on the driver as soon
as it arrives: the runner appends it to ``results.jsonl`` at once, so an interrupted run
(a worker crash, Ctrl-C, an unreachable server) keeps every finished record and resumes
where it stopped. The first error that stops a run (a worker crash, a fault of the
machine or network) stops it and is re-raised.

Cluster: ``ray.init()`` is called only when Ray is not initialised yet; it joins the
cluster named by ``$RAY_ADDRESS`` when set, else starts a local one with
``include_dashboard=False``. Actors ask for ``num_cpus=1`` each.
Must NOT know: strategies, engines (it wires configs), Hydra.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable, Sequence

from ttc.config import RunConfig, load_run_config
from ttc.registry import ConfigError
from ttc.types import Problem

IN_FLIGHT_PER_WORKER = 2


class _Worker:
    """One Ray actor: a pipeline built once, solving problems into eval records."""

    def __init__(self, config: dict[str, Any], dataset: str, save_tree: bool,
                 fresh: bool) -> None:
        import threading  # noqa: PLC0415

        backend = config.get("backend", {})
        if backend.get("name") == "native" and "threads" in backend:
            config = {**config, "backend": {**backend, "threads": 1}}   # num_cpus=1
        self.config = load_run_config(config)
        self.dataset, self.save_tree, self.fresh = dataset, save_tree, fresh
        self.shared: tuple[Any, Any] | None = None
        self._build_lock = threading.Lock()

    def _pipeline(self) -> Any:
        from ttc.pipeline import Pipeline  # noqa: PLC0415
        from ttc.sharing import shared_engine  # noqa: PLC0415

        if self.fresh:
            return Pipeline.from_config(self.config)
        with self._build_lock:
            if self.shared is None:
                self.shared = shared_engine(self.config)
        return Pipeline.from_config(self.config, shared=self.shared)

    def solve(self, index: int, problem: dict[str, Any]) -> dict[str, Any]:
        from ttc.evals.records import solve_to_record  # noqa: PLC0415

        return solve_to_record(self._pipeline(), Problem.model_validate(problem), index,
                               config=self.config, dataset=self.dataset,
                               save_tree=self.save_tree)

    def pid(self) -> int:
        return os.getpid()


def _ray() -> Any:
    try:
        import ray  # noqa: PLC0415
    except ImportError as err:
        raise ConfigError("executor=ray needs Ray: pip install 'ttc[ray]' (or ray>=2.40).") from err
    return ray


def run_on_ray(config: RunConfig, todo: Sequence[tuple[int, Problem]], *, dataset: str,
               save_tree: bool, fresh: bool, workers: int,
               accept: Callable[[dict[str, Any]], None]) -> int:
    """Solve ``todo`` on ``workers`` Ray actors; ``accept`` each record; return the count."""
    if workers <= 0:
        raise ConfigError(f"executor=ray needs concurrency >= 1 workers; got {workers!r}.")
    if not todo:
        return 0
    ray = _ray()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False,
                 **({} if os.environ.get("RAY_ADDRESS") else {"num_cpus": max(workers, 1)}))
    actor_cls = ray.remote(num_cpus=1, max_concurrency=IN_FLIGHT_PER_WORKER)(_Worker)
    n = min(workers, len(todo))
    actors = [actor_cls.remote(config.dump(), dataset, save_tree, fresh) for _ in range(n)]
    queue = deque(todo)
    owner: dict[Any, Any] = {}
    done = 0
    try:
        def submit(actor: Any) -> None:
            index, problem = queue.popleft()
            ref = actor.solve.remote(index, problem.model_dump(mode="json"))
            owner[ref] = actor

        for actor in actors:
            for _ in range(IN_FLIGHT_PER_WORKER):
                if queue:
                    submit(actor)
        while owner:
            ready, _ = ray.wait(list(owner), num_returns=1)
            ref = ready[0]
            actor = owner.pop(ref)
            record = ray.get(ref)          # re-raises a worker's error here
            accept(record)
            done += 1
            if queue:
                submit(actor)
    finally:
        for ref in owner:
            ray.cancel(ref, force=False)
        for actor in actors:
            ray.kill(actor)
    return done
