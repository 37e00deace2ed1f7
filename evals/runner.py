"""``ttc eval``: run a strategy over a dataset, one appended JSONL record per problem.

Contract: :func:`prepare_eval` validates *everything* (run config, dataset, output
folder, agreement with an earlier run there) before anything is created;
:func:`run_eval` then runs the problems not yet finished and appends one record per
problem to ``results.jsonl``.

Output folder::

    DIR/config.json     the validated RunConfig dump + dataset + seed + grader (identity);
                        a rerun whose identity differs is refused, never mixed
    DIR/results.jsonl   one record per finished problem (completion order), see below
    DIR/summary.json    metrics over EVERY record in results.jsonl, whatever this run's
                        ``limit``; ``plan`` says how this run's problems relate to them

summary.json describes exactly the records in results.jsonl, never fewer: it is deleted
before the first new record is appended and rewritten when the run ends (finished,
stopped by a fault, or interrupted), so after a ``kill -9`` it is absent rather than
stale. Its ``records`` = graded ``problems`` + ``failed``; every metric is over the graded
ones; ``plan`` = {``problems``: this run's problems (the dataset up to ``limit``),
``recorded``: how many of them have a record, ``outside``: records of problems beyond
this run's ``limit``}.

Failures. A problem whose solve raises (a prompt longer than the model's context, a
search that does not fit the KV pool, an error in a strategy) becomes a *failed record*
(``error``: ``Type: message``, one line; ``error_type``; no answer, ledger or
candidates; ``correct`` is null) and the run goes on. A rerun skips failed records like
finished ones; ``retry_failed=true`` first removes this run's failed records from the
file (an atomic rewrite) and runs those problems again. A fault of the machine or the
network (:func:`ttc.faults.stops_the_run`: a server down, a full disk, out of memory)
stops the run instead, writes no record for the problems in flight, and names how many
problems are recorded; the rerun resumes.

Peak KV per problem: with an engine whose page pool measures windows (the native
engine's ``pool.open_window``), a record's ``ledger.peak_kv_bytes`` is the most KV bytes
resident in the engine's pool at any moment between the problem's start and its record.
With ``concurrency=1`` that is the problem's own KV; with several problems in flight on
one shared engine it includes theirs (an upper bound on the problem's own). Other
engines report their own high-water mark (per engine, so per problem with
``fresh_engine``).

Crash safety: each record is one ``os.write`` of a complete line on an ``O_APPEND``
descriptor, then ``fsync``. A run killed at any moment leaves whole lines plus at most
one partial last line (the problem in flight); a rerun cuts that partial tail, skips
every finished id and runs the rest, so its records equal an uninterrupted run's
(the simulated backend gets a fresh engine per problem, which makes each record a
function of (config, problem) alone). A malformed *complete* line is corruption: the
rerun stops with the file and line number instead of guessing.

Record fields: ``id index gold answer correct ungradable strategy dataset seed grader
candidate_answers candidate_correct candidate_scores ledger budget_exhausted
wall_seconds`` and ``tree`` (with ``save_tree=true``); a failed record: ``id index gold
answer correct strategy dataset seed error error_type wall_seconds``.

Concurrency (``concurrency=N``): N worker threads, so N problems are in flight at once.
With ``share_engine`` (the default: ``null`` means on for every backend but the
simulator) the workers share ONE generator and ONE verifier (:mod:`ttc.sharing`), built
before the output folder is created (so a memory setting the machine cannot hold leaves
nothing on disk): on the
native engine, a continuous-batching step loop, every problem's branches decode in the
same batch at every step, and each problem's remaining token budget travels with its
own requests, so budgets stay exact and problems batch until their last step. Each
problem's ledger is its own (the engine reports each call's usage). Records then depend
on how problems interleave only where sampling is unseeded. With ``share_engine=false``
each worker builds its own pipeline (its own engine: N copies of the weights); the
simulated backend does this by default (pure Python, the GIL allows no overlap).
Must NOT know: strategy internals, engine internals (beyond the optional
``pool.open_window`` used for per-problem peak KV), Hydra.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import PositiveInt, ValidationError

from ttc.atomic import write_atomic, write_text_atomic
from ttc.compose import RUN_GROUPS
from ttc.config import RunConfig, load_run_config
from ttc.evals.datasets import DatasetConfig, dataset_config, load_problems
from ttc.evals.grading import grader_name
from ttc.evals.metrics import is_failed
from ttc.evals.progress import EvalProgress, choose_display
from ttc.evals.records import solve_to_record
from ttc.registry import ConfigError, format_validation_error
from ttc.types import Frozen, Problem

_BUILD_LOCK = threading.Lock()        # pipelines are built one at a time (see pipeline())
EVAL_KEYS = ("dataset", "limit", "output", "concurrency", "save_tree", "progress",
             "fresh_engine", "executor", "share_engine", "retry_failed")
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
    retry_failed: bool = False           # rerun this run's failed records (else skip them)


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
    unknown = sorted(set(data) - set(RUN_GROUPS) - set(EVAL_KEYS))
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a known eval setting; allowed: "
                          f"{', '.join(RUN_GROUPS + EVAL_KEYS)}.")
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
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def _drop_records(path: Path, ids: set[str]) -> None:
    """Rewrite ``path`` without the records of ``ids`` (temp file, fsync, rename)."""
    kept = []
    for line in path.read_bytes().splitlines(keepends=True):
        if line.strip() and str(json.loads(line)["id"]) in ids:
            continue
        kept.append(line)
    write_atomic(path, lambda fh: fh.write(b"".join(kept)))


# -- running ------------------------------------------------------------------------------
def run_eval(plan: EvalPlan, *, on_record: Callable[[dict[str, Any]], None] | None = None,
             echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every problem of ``plan`` without a record; return the summary of the file.

    ``on_record`` is called after each record is safely on disk (progress hooks, tests).
    """
    from ttc.pipeline import Pipeline

    out = plan.output
    config, settings = plan.config, plan.settings
    results_path = out / RESULTS
    ids = {p.id for p in plan.problems}
    existing = read_results(results_path, repair=True)
    retry = {str(r["id"]) for r in existing
             if is_failed(r) and r["id"] in ids} if settings.retry_failed else set()
    done = {r["id"] for r in existing if str(r["id"]) not in retry}
    todo = [(i, p) for i, p in enumerate(plan.problems) if p.id not in done]
    if echo and done & ids:
        failed = sum(1 for r in existing if is_failed(r) and r["id"] in ids and
                     str(r["id"]) not in retry)
        echo(f"resuming {out}: {len(done & ids)} of {len(ids)} problems already recorded"
             + (f" ({failed} failed; retry_failed=true reruns them)." if failed else "."))

    fresh = (settings.fresh_engine if settings.fresh_engine is not None
             else config.backend.name == "simulated")
    local = threading.local()
    share = (settings.share_engine if settings.share_engine is not None
             else config.backend.name != "simulated")
    # NOTE: built before the folder is created: a bad model or memory setting leaves nothing.
    shared = (_shared_engine(config) if todo and share and settings.executor == "local"
              else None)

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create output folder {str(out)!r}: {err.strerror}.") from err
    if not (out / CONFIG).exists():
        _write_json(out / CONFIG, plan.identity)
    if todo:
        # NOTE: the summary of the old records would be stale from the first append on.
        (out / SUMMARY).unlink(missing_ok=True)
    if retry:
        _drop_records(results_path, retry)
        if echo:
            echo(f"retrying {len(retry)} failed problems.")

    def pipeline() -> Pipeline:
        if shared is not None:
            if not hasattr(local, "pipe"):
                local.pipe = Pipeline.from_config(config, shared=shared)
            return local.pipe
        if fresh or not hasattr(local, "pipe"):
            # NOTE: one build at a time: worker threads importing transformers and loading
            # models at once failed at random ("cannot import name 'AutoConfig'").
            with _BUILD_LOCK:
                local.pipe = Pipeline.from_config(config)
        return local.pipe

    appender = _Appender(results_path)
    recorded = [r for r in existing if str(r["id"]) not in retry and r["id"] in ids]
    bar = EvalProgress(total=len(plan.problems), done=recorded,
                       display=choose_display(settings.progress, sys.stderr))
    lock = threading.Lock()
    new_ids: set[str] = set()

    def solve(index: int, problem: Problem) -> None:
        accept(solve_to_record(pipeline(), problem, index, config=config,
                               dataset=settings.dataset.name, save_tree=settings.save_tree))

    def accept(record: dict[str, Any]) -> None:
        appender.append(record)
        with lock:
            new_ids.add(record["id"])
            bar.advance(record)
            if echo and is_failed(record):
                echo(f"problem {record['id']} failed: {record['error']} (recorded; "
                     f"retry_failed=true reruns it)")
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
                    fut.result()   # re-raise the first fault that stops the run
    except BaseException as err:
        appender.close()
        bar.close()
        count = len({r["id"] for r in recorded} | new_ids)
        err.add_note(f"{count} of {len(ids)} problems are recorded in {results_path}; "
                     f"rerun the same command to resume.")
        # NOTE: the fault in flight is what the user must see; if the summary cannot be
        # written now either, summary.json stays absent (it was deleted above), not stale.
        with contextlib.suppress(Exception):
            _write_summary(plan, shared)
        raise
    appender.close()
    bar.close()
    return _write_summary(plan, shared)


def _write_summary(plan: EvalPlan, shared: tuple[Any, Any] | None) -> dict[str, Any]:
    """summary.json over every record in results.jsonl (see the module docstring)."""
    from ttc.evals.metrics import summarize

    records = read_results(plan.output / RESULTS)
    if not records:
        return {}
    records.sort(key=lambda r: r["index"])
    config = plan.config
    ids = {p.id for p in plan.problems}
    in_plan = sum(1 for r in records if r["id"] in ids)
    summary = {**summarize(records), "dataset": plan.settings.dataset.name,
               "strategy": config.strategy.name,
               "max_generated_tokens": config.budget.max_generated_tokens,
               "seed": config.generation.seed,
               "plan": {"problems": len(ids), "recorded": in_plan,
                        "outside": len(records) - in_plan}}
    if shared is not None and hasattr(shared[0], "stats"):
        summary["shared_engine"] = shared[0].stats()
    _write_json(plan.output / SUMMARY, summary)
    return summary


def _shared_engine(config: RunConfig) -> tuple[Any, Any]:
    """One generator and one verifier that every worker thread may call at once."""
    from ttc.sharing import shared_engine

    return shared_engine(config)
