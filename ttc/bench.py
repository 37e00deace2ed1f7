"""Named benchmarks behind ``ttc bench NAME [--quick] [--json PATH]``.

Contract: a benchmark is a function ``run(*, quick: bool) -> BenchReport`` (the report type
is a core type, :class:`ttc.types.BenchReport`) in some module,
listed here by name and import path (imported only when run). Its report holds
``name``, ``machine`` (filled in here), ``metrics`` (absolute figures, with units in
their keys) and ``ratios`` (measured side by side in the same run: machines are
noisy, ratios travel). Benchmarks never run inside pass/fail tests.
Must NOT know: what any benchmark measures.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import platform
from pathlib import Path
from typing import Any

from ttc.atomic import write_text_atomic
from ttc.registry import ConfigError, UnknownName
from ttc.types import BenchReport

# name -> "module:function"; each entry's module docstring says what it measures.
BENCHMARKS: dict[str, str] = {
    "overhead": "ttc.evals.bench_overhead:run",
    "engine": "ttc.engine.bench:run",
    "attention": "ttc.engine.native.kernels.bench:run",
    "prm": "ttc.verifiers.bench:run",
    "concurrency": "ttc.evals.bench_concurrency:run",
}


def describe_machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count(), "processor": platform.processor() or
                            platform.machine()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def run_benchmark(name: str, *, quick: bool, json_path: str | Path | None = None,
                  options: dict[str, Any] | None = None) -> BenchReport:
    """Run benchmark ``name``; ``options`` are extra keyword arguments of its ``run``
    (``ttc bench engine --backends native,hf`` passes ``backends``)."""
    if name not in BENCHMARKS:
        raise UnknownName(f"unknown benchmark {name!r}; available: {', '.join(sorted(BENCHMARKS))}.")
    module_name, func_name = BENCHMARKS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith(module_name.rsplit(".", 1)[0]):
            raise UnknownName(f"benchmark {name!r} is not available in this installation "
                              f"({module_name} is missing).") from err
        raise
    func = getattr(module, func_name)
    options = options or {}
    accepted = inspect.signature(func).parameters
    for key in options:
        if key not in accepted:
            raise ConfigError(f"benchmark {name!r} takes no --{key} option.")
    report: BenchReport = func(quick=quick, **options)
    report.machine = {**describe_machine(), **report.machine}
    if json_path is not None:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n")
    return report
