"""``ttc eval``: run a strategy over a dataset, one appended JSONL record per problem.

Contract: :func:`prepare_eval` validates *everything* (run config, dataset, output
folder, agreement with an earlier run there) before anything is created;
:func:`run_eval` then runs the problems not yet finished and appends one record per
problem to ``results.jsonl``.

Output folder::

    DIR/config.json     the validated RunConfig dump + dataset + seed + grader (identity);
                        a rerun whose identity differs is refused, never mixed
    DIR/results.jsonl   one record per finished problem (completion order), see below
    DIR/summary.json    metrics over the records of this run's problems (rewritten at end)

Crash safety: each record is one ``os.write`` of a complete line on an ``O_APPEND``
descriptor, then ``fsync``. A run killed at any moment leaves whole lines plus at most
one partial last line (the problem in flight); a rerun cuts that partial tail, skips
every finished id and runs the rest, so its records equal an uninterrupted run's
(the simulated backend gets a fresh engine per problem, which makes each record a
function of (config, problem) alone). A malformed *complete* line is corruption: the
rerun stops with the file and line number instead of guessing.

Record fields: ``id index gold answer correct ungradable strategy dataset seed grader
candidate_answers candidate_correct candidate_scores ledger budget_exhausted
wall_seconds`` and ``tree`` (with ``save_tree=true``).

Concurrency (``concurrency=N``): N worker threads, so N problems are in flight at once.
With ``share_engine`` (the default: ``null`` means on for every backend but the
simulator) the workers share ONE generator and ONE verifier (:mod:`ttc.sharing`): on the
native engine, a continuous-batching step loop, every problem's branches decode in the
same batch at every step, and each problem's remaining token budget travels with its
own requests, so budgets stay exact and problems batch until their last step. Each
problem's ledger is its own (the engine reports each call's usage). Records then depend
on how problems interleave only where sampling is unseeded. With ``share_engine=false``
each worker builds its own pipeline (its own engine: N copies of the weights); the
simulated backend does this by default (pure Python, the GIL allows no overlap).
Must NOT know: strategy internals, engine internals, Hydra.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import PositiveInt, ValidationError

from ttc.config import RunConfig, load_run_config
from ttc.evals.datasets import DatasetConfig, dataset_config, load_problems
from ttc.evals.grading import grader_name, is_correct, ungradable
from ttc.registry import ConfigError, format_validation_error
from ttc.types import Frozen, Problem, Result

RUN_KEYS = ("backend", "verifier", "strategy", "generation", "budget")
EVAL_KEYS = ("dataset", "limit", "output", "concurrency", "save_tree", "progress",
             "fresh_engine", "executor", "share_engine")
RESULTS = "results.jsonl"
CONFIG = "config.json"
SUMMARY = "summary.json"


class EvalSettings(Frozen):
    """The eval-only keys of the composed config (``ttc/conf/eval.yaml``)."""

    dataset: DatasetConfig
    limit: PositiveInt | None = None
    output: str | None = None            # None: results/<dataset>/<strategy>-b<tokens>-s<seed>
    concurrency: PositiveInt = 1
    save_tree: bool = False
    progress: bool = True
    fresh_engine: bool | None = None     # None: a fresh engine per problem when simulated
    share_engine: bool | None = None     # one engine for all workers; None: on unless simulated
    executor: Literal["local", "ray"] = "local"   # ray: `concurrency` Ray workers


@dataclass(frozen=True)
class EvalPlan:
    """A fully validated eval, ready to run; nothing has been written yet."""

    config: RunConfig
    settings: EvalSettings
    problems: tuple[Problem, ...]
    output: Path
    identity: dict[str, Any]


def split_config(data: dict[str, Any]) -> tuple[RunConfig, EvalSettings]:
    """Validate a composed eval config into the run config and the eval settings."""
    unknown = sorted(set(data) - set(RUN_KEYS) - set(EVAL_KEYS))
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a known eval setting; allowed: "
                          f"{', '.join(RUN_KEYS + EVAL_KEYS)}.")
    config = load_run_config(data, extra_keys=EVAL_KEYS)
    eval_data = {k: data[k] for k in EVAL_KEYS if k in data}
    if "dataset" not in eval_data:
        raise ConfigError("an eval needs a dataset (for example dataset=math500).")
    eval_data["dataset"] = dataset_config(eval_data["dataset"])
    try:
        settings = EvalSettings.model_validate(eval_data)
    except ValidationError as err:
        raise ConfigError(format_validation_error("eval", err)) from err
    return config, settings


def default_output(config: RunConfig, settings: EvalSettings) -> Path:
    tokens = config.budget.max_generated_tokens
    return (Path("results") / settings.dataset.name /
            f"{config.strategy.name}-b{tokens if tokens else 'inf'}-s{config.generation.seed}")


def identity_of(config: RunConfig, settings: EvalSettings) -> dict[str, Any]:
    """What must match for two runs to share one results file."""
    return {"run": config.dump(), "dataset": settings.dataset.model_dump(mode="json"),
            "seed": config.generation.seed, "save_tree": settings.save_tree,
            "grader": grader_name()}


def prepare_eval(data: dict[str, Any], *, output: str | Path | None = None) -> EvalPlan:
    """Validate config, dataset and output folder; create nothing."""
    config, settings = split_config(data)
    problems = load_problems(settings.dataset, limit=settings.limit)
    out = Path(output if output is not None else
               settings.output or default_output(config, settings)).expanduser()
    identity = identity_of(config, settings)
    check_output(out, identity)
    return EvalPlan(config=config, settings=settings, problems=tuple(problems), output=out,
                    identity=identity)


def check_output(out: Path, identity: dict[str, Any]) -> None:
    """Refuse an output that is not a writable folder or holds a different run."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {str(out)!r} exists and is not a folder.")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"output folder {str(out)!r} is not writable "
                          f"({str(probe)!r} does not allow writing).")
    cfg_path = out / CONFIG
    if cfg_path.exists():
        try:
            previous = json.loads(cfg_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{cfg_path} is not valid JSON ({err.msg}); refusing to "
                              f"resume into {str(out)!r}.") from err
        if previous != identity:
            raise ConfigError(f"output {str(out)!r} holds a run with a different config "
                              f"({_first_difference(previous, identity)}); use another "
                              f"output folder rather than mixing results.")
    elif (out / RESULTS).exists():
        raise ConfigError(f"output {str(out)!r} has {RESULTS} but no {CONFIG}; refusing to "
                          f"append to results of unknown config.")


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path
                                         else key)
    return f"{path or 'config'}: was {old!r}, now {new!r}"


# -- the results file ---------------------------------------------------------------------
def read_results(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Records of a results file. A partial last line (a run killed mid-write) is dropped,
    and cut from the file when ``repair``; a malformed complete line is an error."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data) and repair:
        with open(path, "r+b") as fh:
            fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())
    records = []
    for lineno, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{lineno}: malformed results line ({err.msg}); the "
                              f"file was edited or corrupted.") from err
        if not isinstance(rec, dict) or "id" not in rec:
            raise ConfigError(f"{path}:{lineno}: a results line must be an object with an "
                              f"'id'.")
        records.append(rec)
    return records


class _Appender:
    """Appends whole lines atomically (one write per line on an O_APPEND descriptor)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        with self._lock:
            written = os.write(self._fd, line)
            if written != len(line):   # a short write on a full disk: leave no fragment
                raise OSError(f"short write to the results file ({written}/{len(line)} bytes)")
            os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# -- running ------------------------------------------------------------------------------
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


def run_eval(plan: EvalPlan, *, on_record: Callable[[dict[str, Any]], None] | None = None,
             echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every unfinished problem of ``plan``; return the summary of all its problems.

    ``on_record`` is called after each record is safely on disk (progress hooks, tests).
    """
    from ttc.evals.metrics import summarize
    from ttc.pipeline import Pipeline

    out = plan.output
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create output folder {str(out)!r}: {err.strerror}.") from err
    if not (out / CONFIG).exists():
        _write_json(out / CONFIG, plan.identity)
    results_path = out / RESULTS
    existing = read_results(results_path, repair=True)
    done = {r["id"] for r in existing}
    todo = [(i, p) for i, p in enumerate(plan.problems) if p.id not in done]
    ids = {p.id for p in plan.problems}
    records = [r for r in existing if r["id"] in ids]
    if echo and done:
        echo(f"resuming {out}: {len(done & ids)} of {len(ids)} problems already done.")

    config, settings = plan.config, plan.settings
    fresh = (settings.fresh_engine if settings.fresh_engine is not None
             else config.backend.name == "simulated")
    local = threading.local()
    share = (settings.share_engine if settings.share_engine is not None
             else config.backend.name != "simulated")
    shared = _shared_engine(config) if share and settings.executor == "local" else None

    def pipeline() -> Pipeline:
        if shared is not None:
            if not hasattr(local, "pipe"):
                local.pipe = Pipeline(generator=shared[0], verifier=shared[1],
                                      strategy=config.strategy, budget=config.budget,
                                      generation=config.generation)
            return local.pipe
        if fresh or not hasattr(local, "pipe"):
            local.pipe = Pipeline.from_config(config)
        return local.pipe

    appender = _Appender(results_path)
    bar = _ProgressBar(total=len(plan.problems), done=records,
                       enabled=settings.progress and sys.stderr.isatty())
    lock = threading.Lock()

    def solve(index: int, problem: Problem) -> None:
        t0 = time.perf_counter()
        result = pipeline().solve(problem)
        accept(make_record(problem, index, result, dataset=settings.dataset.name,
                           seed=config.generation.seed,
                           wall=time.perf_counter() - t0, save_tree=settings.save_tree))

    def accept(record: dict[str, Any]) -> None:
        appender.append(record)
        with lock:
            records.append(record)
            bar.advance(record)
        if on_record is not None:
            on_record(record)

    try:
        if settings.executor == "ray":
            from ttc.evals.ray_executor import run_on_ray

            run_on_ray(config, todo, dataset=settings.dataset.name, save_tree=settings.save_tree,
                       fresh=fresh, workers=settings.concurrency, accept=accept)
        elif settings.concurrency == 1:
            for index, problem in todo:
                solve(index, problem)
        else:
            with ThreadPoolExecutor(max_workers=settings.concurrency,
                                    thread_name_prefix="ttc-eval") as pool:
                futures = [pool.submit(solve, i, p) for i, p in todo]
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for fut in futures:
                    fut.cancel()
                for fut in finished:
                    fut.result()   # re-raise the first failure
    finally:
        appender.close()
        bar.close()
    records.sort(key=lambda r: r["index"])
    summary = {**summarize(records), "dataset": settings.dataset.name,
               "strategy": config.strategy.name,
               "max_generated_tokens": config.budget.max_generated_tokens,
               "seed": config.generation.seed}
    if shared is not None and hasattr(shared[0], "stats"):
        summary["shared_engine"] = shared[0].stats()
    _write_json(out / SUMMARY, summary)
    return summary


def _shared_engine(config: RunConfig) -> tuple[Any, Any]:
    """One generator and one verifier that every worker thread may call at once."""
    from ttc.registry import BACKENDS, VERIFIERS
    from ttc.sharing import shared_generator, shared_verifier

    generator = shared_generator(BACKENDS.build(config.backend))
    verifier = shared_verifier(VERIFIERS.build(config.verifier, generator=generator))
    return generator, verifier


class _ProgressBar:
    """A rich progress bar with running accuracy and tokens per problem (tty only)."""

    def __init__(self, *, total: int, done: list[dict[str, Any]], enabled: bool) -> None:
        self.correct = sum(bool(r["correct"]) for r in done)
        self.tokens = sum(r["ledger"]["generated_tokens"] for r in done)
        self.count = len(done)
        self._progress = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self._progress = Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                                  TimeRemainingColumn(), console=Console(stderr=True))
        self._task = self._progress.add_task("eval", total=total, completed=self.count,
                                             stats=self._stats())
        self._progress.start()

    def _stats(self) -> str:
        if not self.count:
            return "acc – · tok/problem –"
        return (f"acc {self.correct / self.count:.3f} · "
                f"tok/problem {self.tokens / self.count:,.0f}")

    def advance(self, record: dict[str, Any]) -> None:
        self.count += 1
        self.correct += bool(record["correct"])
        self.tokens += record["ledger"]["generated_tokens"]
        if self._progress is not None:
            self._progress.update(self._task, advance=1, stats=self._stats())

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
