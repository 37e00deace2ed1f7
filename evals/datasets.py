"""Evaluation datasets: shipped math test sets, local files, hub sets, simulated sets.

Contract: :class:`DatasetConfig` (the Hydra group ``ttc/conf/dataset/<name>.yaml``) says
where problems come from; :func:`load_problems` turns it into a list of
:class:`~ttc.types.Problem` with unique ids and gold answers, or raises one
:class:`~ttc.registry.ConfigError` sentence (unknown dataset, missing file, malformed
line *with file and line number*, checksum mismatch, no problems).

    source        where                                     notes
    ------------  ----------------------------------------  ------------------------------
    builtin       evals/data/<name>/test.jsonl (shipped)    sha256 checked on every load
    file          path: a .jsonl / .json / .parquet file    fields mapped by *_field
    hub           path: a `datasets` hub id (+ subset)      needs the hub or its cache
    simulated     evals.tasks.make_problems                 n, difficulty, seed
    countdown     evals.tasks.countdown_problem             n, seed, task_size (numbers)
    arithmetic_chain  evals.tasks.arithmetic_chain_problem  task_size (ops)

A name alone (``load_problems("sim_hard")``) means the shipped settings the CLI uses
(``ttc/conf/dataset/<name>.yaml``), so Python and ``ttc eval dataset=NAME`` load the same
problems.

Countdown and arithmetic-chain problems carry their task in ``metadata``, so the
``programmatic`` verifier checks every step exactly (``verifier=programmatic``).

The shipped files are byte-for-byte copies of public test splits; ``data/manifest.json``
holds their sha256 and source, ``data/PROVENANCE.md`` the full provenance.
Must NOT know: strategies, engines, Hydra.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import PositiveInt, ValidationError, model_validator

from ttc.registry import ConfigError, format_validation_error
from ttc.types import Frozen, Problem

DATA_DIR = Path(__file__).parent / "data"
BUILTIN = ("gsm8k", "math500", "aime24", "aime25", "amc23")


class DatasetConfig(Frozen):
    """Where an eval's problems come from and how records map onto problems."""

    name: str
    source: Literal["builtin", "file", "hub", "simulated", "countdown",
                    "arithmetic_chain"] = "builtin"
    path: str | None = None                 # file path (source=file) or hub id (source=hub)
    subset: str | None = None               # hub config name
    split: str = "test"
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str | None = None             # None: the record's 0-based position
    metadata_fields: tuple[str, ...] = ()
    answer_format: Literal["plain", "gsm8k"] = "plain"   # gsm8k: the text after '####'
    strip_suffix: str | None = None         # removed from the end of every question
    # generated sets (source=simulated, countdown, arithmetic_chain)
    n: PositiveInt = 100
    difficulty: float | tuple[float, float] = (0.0, 1.0)   # simulated only
    seed: int = 0
    task_size: PositiveInt | None = None    # countdown: numbers (4); chain: operations (5)

    @model_validator(mode="after")
    def _check(self) -> "DatasetConfig":
        if self.source in ("file", "hub") and not self.path:
            raise ValueError(f"dataset source {self.source!r} needs a path")
        if self.source == "builtin" and self.name not in BUILTIN:
            raise ValueError(f"unknown builtin dataset {self.name!r}; shipped: "
                             f"{', '.join(BUILTIN)}")
        lo, hi = ((self.difficulty, self.difficulty) if isinstance(self.difficulty, float | int)
                  else self.difficulty)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"difficulty must lie in [0, 1] (a value or a [low, high] range); "
                             f"got {self.difficulty!r}")
        return self


def dataset_config(data: Any) -> DatasetConfig:
    """Validate a dict or a shipped name into a :class:`DatasetConfig` (one-line errors)."""
    if isinstance(data, DatasetConfig):
        return data
    if isinstance(data, str):
        data = shipped_dataset(data)
    if not isinstance(data, dict):
        raise ConfigError(f"dataset must be a name or a mapping; got {data!r}.")
    try:
        return DatasetConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        if first.get("type") == "value_error":
            raise ConfigError(f"dataset: {str(first.get('msg')).removeprefix('Value error, ')}."
                              ) from err
        raise ConfigError(format_validation_error("dataset", err)) from err


def shipped_dataset(name: str) -> dict[str, Any]:
    """The settings of a dataset the CLI knows by name (``ttc/conf/dataset/<name>.yaml``)."""
    import yaml

    from ttc.compose import CONF_DIR, group_options

    choices = [c for c in group_options("dataset") if c not in ("file", "hub")]
    if name not in choices:
        raise ConfigError(f"unknown dataset {name!r}; available by name: {', '.join(choices)} "
                          f"(a local file or a hub set needs a mapping with source and path).")
    return yaml.safe_load((CONF_DIR / "dataset" / f"{name}.yaml").read_text(encoding="utf-8"))


# -- reading records ----------------------------------------------------------------------
@lru_cache(maxsize=1)
def manifest() -> dict[str, Any]:
    return json.loads((DATA_DIR / "manifest.json").read_text(encoding="utf-8"))


def verify_builtin(name: str) -> Path:
    """Path of a shipped test set after checking its sha256 against the manifest."""
    entry = manifest().get(name)
    if entry is None:
        raise ConfigError(f"unknown builtin dataset {name!r}; shipped: {', '.join(BUILTIN)}.")
    path = DATA_DIR / entry["file"]
    if not path.is_file():
        raise ConfigError(f"dataset file {path} is missing from this installation.")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != entry["sha256"]:
        raise ConfigError(f"dataset file {path} fails its checksum (sha256 {digest[:12]}…, "
                          f"expected {entry['sha256'][:12]}…); reinstall ttc.")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per line; blank lines skipped; a bad line names file and line."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}:{lineno}: malformed JSON line ({err.msg} at "
                                  f"column {err.colno}).") from err
            if not isinstance(obj, dict):
                raise ConfigError(f"{path}:{lineno}: expected a JSON object per line; got "
                                  f"{type(obj).__name__}.")
            records.append(obj)
    return records


def _read_file(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"dataset file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{err.lineno}: malformed JSON ({err.msg}).") from err
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ConfigError(f"{path}: expected a JSON list of objects (or {{'data': [...]}}).")
        return data
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise ConfigError(f"dataset file {str(path)!r} must end in .jsonl, .json or .parquet.")


def _read_hub(cfg: DatasetConfig) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError as err:
        raise ConfigError("dataset source 'hub' needs the `datasets` package.") from err
    try:
        ds = datasets.load_dataset(cfg.path, cfg.subset, split=cfg.split)
    except Exception as err:   # the hub raises many kinds; the user needs one line
        raise ConfigError(f"cannot load hub dataset {cfg.path!r} (split {cfg.split!r}): "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                          ) from err
    return [dict(r) for r in ds]


def _gsm8k_answer(text: str) -> str:
    return text.rsplit("####", 1)[-1].strip().replace(",", "")


def _records_to_problems(cfg: DatasetConfig, records: list[dict[str, Any]],
                         where: str) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(records):
        for fieldname in (cfg.question_field, cfg.answer_field):
            if fieldname not in rec:
                raise ConfigError(f"{where}: record {i + 1} has no field {fieldname!r} "
                                  f"(fields: {', '.join(sorted(rec))}); set "
                                  f"dataset.question_field / dataset.answer_field.")
        question = str(rec[cfg.question_field])
        if cfg.strip_suffix and question.endswith(cfg.strip_suffix):
            question = question[: -len(cfg.strip_suffix)]
        if not question.strip():
            raise ConfigError(f"{where}: record {i + 1} has an empty question.")
        answer = rec[cfg.answer_field]
        answer = _gsm8k_answer(str(answer)) if cfg.answer_format == "gsm8k" else _plain(answer)
        pid = str(rec[cfg.id_field]) if cfg.id_field else str(i)
        if cfg.id_field and cfg.id_field not in rec:
            raise ConfigError(f"{where}: record {i + 1} has no id field {cfg.id_field!r}.")
        if pid in seen:
            raise ConfigError(f"{where}: records {seen[pid] + 1} and {i + 1} share the id "
                              f"{pid!r}; ids must be unique for resumable runs.")
        seen[pid] = i
        meta = {k: rec[k] for k in cfg.metadata_fields if k in rec}
        problems.append(Problem(id=pid, question=question, answer=answer, metadata=meta))
    return problems


def _plain(answer: Any) -> str:
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer))
    return str(answer).strip()


def _programmatic(cfg: DatasetConfig) -> list[Problem]:
    from ttc.evals.tasks import arithmetic_chain_problem, countdown_problem

    problems = []
    for i in range(cfg.n):
        seed = cfg.seed * 1_000_003 + i
        if cfg.source == "countdown":
            if cfg.task_size is not None and cfg.task_size < 2:
                raise ConfigError(f"dataset.task_size (numbers per Countdown problem) must be "
                                  f"at least 2; got {cfg.task_size}.")
            p = countdown_problem(seed, n_numbers=cfg.task_size or 4)
        else:
            p = arithmetic_chain_problem(seed, length=cfg.task_size or 5)
        problems.append(p.model_copy(update={"id": f"{cfg.name}-{cfg.seed}-{i}"}))
    return problems


def load_problems(cfg: DatasetConfig | dict | str, *, limit: int | None = None) -> list[Problem]:
    """The dataset's problems in file order (the first ``limit`` of them)."""
    cfg = dataset_config(cfg)
    if limit is not None and limit <= 0:
        raise ConfigError(f"limit must be a positive number of problems; got {limit!r}.")
    if cfg.source == "simulated":
        from ttc.evals.tasks import make_problems

        diff = cfg.difficulty if isinstance(cfg.difficulty, float | int) else tuple(cfg.difficulty)
        problems = make_problems(cfg.n, seed=cfg.seed, difficulty=diff, prefix=cfg.name)
    elif cfg.source in ("countdown", "arithmetic_chain"):
        problems = _programmatic(cfg)
    else:
        if cfg.source == "builtin":
            path = verify_builtin(cfg.name)
            records, where = read_jsonl(path), str(path)
        elif cfg.source == "file":
            path = Path(cfg.path).expanduser()
            records, where = _read_file(path), str(path)
        else:
            records, where = _read_hub(cfg), f"hub:{cfg.path}"
        problems = _records_to_problems(cfg, records, where)
    if not problems:
        raise ConfigError(f"dataset {cfg.name!r} has no problems.")
    return problems[:limit] if limit is not None else problems
