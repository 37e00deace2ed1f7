"""The ``ttc`` command line: solve, strategies, config, bench (and the commands later
layers add: grade, eval, sweep, report, tree, serve).

Contract: declares the commands. Configs are composed by :mod:`ttc.compose` from the
user's overrides (``strategy=astar``, ``strategy.n=16``; the flags ``--strategy astar`` and
``--budget 4096`` are spelled-out overrides) into a frozen :class:`~ttc.config.RunConfig`
handed to the Pipeline; the eval commands' logic is :mod:`ttc.evals.cli`'s. Every
failure of a command is one line on stderr, never a traceback (:mod:`ttc.faults`): exit
code 2 for user errors (unknown name, bad value, unknown key, empty question, an output
path that cannot be written, a memory setting beyond the machine), 1 for faults met
while running (the KV pool full, a server down, a full disk, an internal error).
``--debug`` on any command, or ``TTC_DEBUG=1``, prints the traceback before the line.
Output paths are checked before any work starts.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import click
import typer

from ttc.compose import run_config
from ttc.registry import ConfigError


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ttc: test-time compute orchestration for LLM reasoning.")


class UsageError(ConfigError):
    pass


def debug_enabled() -> bool:
    return os.environ.get("TTC_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Every failure of the command ends in one line on stderr (:mod:`ttc.faults`): exit 2
    for user errors, 1 for faults. Adds a ``--debug`` option that prints the traceback."""
    from ttc.faults import exit_code, one_line

    @functools.wraps(func)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except KeyboardInterrupt as err:
            typer.echo(f"error: {one_line(err)}", err=True)
            raise typer.Exit(code=130) from None
        except Exception as err:  # noqa: BLE001  (every failure becomes one line)
            if debug or debug_enabled():
                import traceback

                traceback.print_exc(file=sys.stderr)
            typer.echo(f"error: {one_line(err)}", err=True)
            raise typer.Exit(code=exit_code(err)) from None

    signature = inspect.signature(func)
    option = inspect.Parameter(
        "debug", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
        default=typer.Option(False, "--debug", help="On failure, print the traceback too "
                                                    "(or set TTC_DEBUG=1)."))
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), option])
    return wrapper


def _flag_overrides(*, strategy: str | None, backend: str | None, verifier: str | None,
                    budget: int | None, model: str | None) -> list[str]:
    out = []
    if strategy:
        out.append(f"strategy={strategy}")
    if backend:
        out.append(f"backend={backend}")
    if verifier:
        out.append(f"verifier={verifier}")
    if budget is not None:
        out.append(f"budget.max_generated_tokens={budget}")
    if model:
        out.append(f"backend.model={model}")
    return out


# -- commands -----------------------------------------------------------------------------
@app.command()
@user_errors
def solve(
    question: str = typer.Argument(..., help="The question to solve."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. strategy.n=16"),
    strategy: Optional[str] = typer.Option(None, "--strategy", "-s", help="Strategy name (ttc strategies)."),
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="Backend name."),
    verifier: Optional[str] = typer.Option(None, "--verifier", "-v", help="Verifier name."),
    budget: Optional[int] = typer.Option(None, "--budget", help="Max generated tokens."),
    model: Optional[str] = typer.Option(None, "--model", help="Model folder, GGUF file or hub id."),
    tree: Optional[Path] = typer.Option(None, "--tree", help="Save the search tree as JSON."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole Result as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    pipeline: Optional[Path] = typer.Option(
        None, "--pipeline", help="A composed pipeline: a YAML file of layers "
                                 "(generate, rank, critique, fuse, verify)."),
    watch: bool = typer.Option(False, "--watch", "-w",
                               help="Show the search tree growing live (on stderr)."),
) -> None:
    """Solve one question and print the answer and the compute ledger."""
    if not question.strip():
        raise UsageError("the question must be a non-empty string; got ''.")
    flags = _flag_overrides(strategy=strategy, backend=backend, verifier=verifier,
                            budget=budget, model=model)
    if pipeline is not None:
        if strategy or any(o.startswith("strategy") for o in overrides or []):
            raise UsageError("--pipeline declares the strategy; drop --strategy and "
                             "strategy overrides.")
        from ttc.compose import compose, overrides_for
        from ttc.config import load_run_config

        data = compose(overrides_for(flags, overrides or []))
        data["strategy"] = pipeline_strategy(pipeline)
        config = load_run_config(data)
    else:
        config = run_config(flags, overrides or [])
    if tree is not None:
        check_output_file(tree, option="--tree", example="tree.json")

    from ttc.pipeline import Pipeline

    if watch and quiet:
        raise UsageError("--watch and --quiet contradict each other; choose one.")
    if watch:
        progress, done = _watch_display(question, config)
    else:
        progress, done = _progress_display(quiet)
    try:
        pipe = Pipeline.from_config(config, progress=progress)
        result = pipe.solve(question)
    finally:
        done()
    # The answer is printed before the tree is written: a failed write loses no result.
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        typer.echo(f"answer: {result.answer if result.answer is not None else '(none)'}")
        from ttc.ledger import ComputeLedger

        ledger = ComputeLedger.total([result.ledger])
        typer.echo(f"ledger: {ledger.summary()}")
        for label, counts in result.ledger.lines.items():
            typer.echo(f"  {label}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        typer.echo(f"strategy: {result.strategy} · candidates: {len(result.candidates)}")
    if tree is not None:
        from ttc.atomic import write_text_atomic

        write_text_atomic(tree, json.dumps(result.tree or {}, indent=1) + "\n")


def pipeline_strategy(path: Path) -> dict[str, Any]:
    """The composed-pipeline strategy config (``archon``) a pipeline file declares: a
    list of layers, or a mapping with ``layers`` (and ``selection``)."""
    import yaml

    from ttc.registry import STRATEGIES

    if not path.is_file():
        raise UsageError(f"--pipeline {str(path)!r} is not a file.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"pipeline file {str(path)!r} is not valid YAML: {first}.") from err
    if isinstance(data, list):
        data = {"layers": data}
    if not isinstance(data, dict) or "layers" not in data:
        raise UsageError(f"pipeline file {str(path)!r} must hold a list of layers or a "
                         f"mapping with `layers:`; got {type(data).__name__}.")
    STRATEGIES.config_class("archon").check_layers(data["layers"],
                                                   where=f"pipeline file {str(path)!r}")
    return {"name": "archon", **data}


def check_output_file(path: Path, *, option: str, example: str) -> None:
    """Refuse, before any work, an output file path that cannot be written."""
    if path.is_dir():
        raise UsageError(f"{option} {str(path)!r} is a folder; name a file, for example "
                         f"{str(path / example)!r}.")
    folder = path.parent
    if not folder.exists():
        raise UsageError(f"{option} folder {str(folder)!r} does not exist.")
    if not folder.is_dir():
        raise UsageError(f"{option} folder {str(folder)!r} is not a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{option} folder {str(folder)!r} is not writable.")


def _progress_display(quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None, lambda: None
    from rich.console import Console

    from ttc.types import EventKind

    console = Console(stderr=True)
    status = console.status("searching…")
    status.start()

    def on_event(event) -> None:
        if event.kind is not EventKind.STEP:   # tree events are for --watch
            return
        best = f" · best {event.best_score:.3f}" if event.best_score is not None else ""
        used = f" · {event.generated_tokens:,} tokens" if event.generated_tokens else ""
        status.update(f"step {event.step} · {event.live} live{best}{used} {event.note}")

    return on_event, status.stop


def _watch_display(question: str, config):
    """The live tree view (:mod:`ttc.live`) on stderr; the answer still goes to stdout."""
    from ttc.live import LiveView

    view = LiveView(question, title=f"{config.strategy.name} · {config.backend.name} · "
                                    f"{config.verifier.name}",
                    budget_tokens=config.budget.max_generated_tokens)
    return view.callback, view.close


@app.command()
@user_errors
def strategies() -> None:
    """List registered strategies with their parameters and defaults."""
    from rich.console import Console
    from rich.table import Table

    from ttc.registry import STRATEGIES

    table = Table(title="strategies")
    table.add_column("name")
    table.add_column("parameters (default)")
    for name in STRATEGIES.names():
        cls = STRATEGIES.config_class(name)
        params = []
        for field, info in cls.model_fields.items():
            if field == "name":
                continue
            default = info.default
            default = getattr(default, "value", default)
            params.append(f"{field}={default!r}")
        table.add_row(name, ", ".join(params))
    Console(width=200).print(table)


@app.command("config")
@user_errors
def show_config(
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides"),
) -> None:
    """Print the composed and validated config."""
    import yaml

    config = run_config(overrides or [])
    typer.echo(yaml.safe_dump(config.dump(), sort_keys=False).rstrip())


@app.command()
@user_errors
def bench(
    name: str = typer.Argument(
        ..., help="Benchmark name: overhead, engine, attention, prm, concurrency."),
    quick: bool = typer.Option(False, "--quick", help="A short run."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON."),
    backends: Optional[str] = typer.Option(None, "--backends",
                                           help="engine: comma list of native,hf,vllm,llamacpp."),
    cotenant: Optional[int] = typer.Option(
        None, "--cotenant", help="engine: also measure beside N busy processes."),
    dtype: Optional[str] = typer.Option(
        None, "--dtype", help="engine: auto (what the engine picks here), bfloat16 or float32."),
) -> None:
    """Run a named benchmark; prints its metrics and side-by-side ratios."""
    from ttc.bench import run_benchmark

    # Only the options given are passed: a benchmark that does not take one refuses it.
    options: dict[str, object] = {}
    if backends is not None:
        options["backends"] = tuple(b.strip() for b in backends.split(",") if b.strip())
    if cotenant is not None:
        options["cotenant"] = cotenant
    if dtype is not None:
        options["dtype"] = dtype
    report = run_benchmark(name, quick=quick, json_path=json_path, options=options)
    typer.echo(json.dumps({"name": report.name, "metrics": report.metrics,
                           "ratios": report.ratios, "notes": report.notes}, indent=2))


@app.command()
@user_errors
def grade(
    gold: str = typer.Argument(..., help="The gold answer (LaTeX or plain)."),
    pred: str = typer.Argument(..., help="The predicted answer."),
) -> None:
    """Say whether PRED is equivalent to GOLD; exit 0 when equivalent, 1 when not."""
    import logging

    from ttc.verifiers.answer_check import is_equivalent

    # math_verify logs a parse timeout (with the whole input) as a warning; for the
    # command line an unparsable answer is just "not equivalent".
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    same = is_equivalent(gold, pred)
    typer.echo("equivalent" if same else "not equivalent")
    raise typer.Exit(0 if same else 1)


# -- evals (logic in ttc.evals.cli) -------------------------------------------------------
@app.command("eval")
@user_errors
def eval_(
    overrides: Optional[list[str]] = typer.Argument(
        None, help="key=value overrides, e.g. dataset=gsm8k strategy=beam budget.tokens=2048 "
                   "limit=50 output=DIR"),
) -> None:
    """Evaluate a strategy on a dataset (resumable; one JSONL record per problem)."""
    from ttc.evals.cli import run_eval_command

    run_eval_command(list(overrides or []), echo=typer.echo)


@app.command()
@user_errors
def sweep(
    overrides: Optional[list[str]] = typer.Argument(
        None, help="comma lists sweep, e.g. strategy=beam,astar budget=8,32 seed=0,1 output=DIR"),
) -> None:
    """Run every combination of the swept overrides into one results folder."""
    from ttc.evals.cli import run_sweep_command

    run_sweep_command(list(overrides or []), echo=typer.echo)


@app.command()
@user_errors
def report(
    results: Path = typer.Argument(..., help="An eval output folder or a sweep folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write (default: RESULTS)."),
) -> None:
    """Write report.md, report.csv and scaling plots (PNG) for a results folder."""
    from ttc.evals.report import write_report

    for name, path in write_report(results, out=out).items():
        typer.echo(f"{name}: {path}")


@app.command()
@user_errors
def tree(
    results: Path = typer.Argument(..., help="A results.jsonl written with save_tree=true, "
                                             "or a tree JSON from ttc solve --tree."),
    problem: Optional[str] = typer.Option(None, "--problem", "-p",
                                          help="The problem id (for a results file)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="File to write: .png, .svg, or .html (an "
                                            "interactive page, self-contained)."),
) -> None:
    """Draw one problem's search tree with its scores (a picture or an interactive page)."""
    from ttc.evals.treeview import FORMATS, draw_tree, find_record, write_tree_html

    name = str(problem if problem is not None else results.stem).replace("/", "_")
    path = out or Path(f"tree-{name}.png")
    check_output_file(path, option="--out", example="tree.png")
    if path.suffix.lower() not in FORMATS:
        raise UsageError(f"--out {str(path)!r} must end in {', '.join(FORMATS)}.")
    record = find_record(results, problem)
    if path.suffix.lower() == ".html":
        write_tree_html(record, path)
    else:
        draw_tree(record, path)
    typer.echo(f"tree: {path}")


@app.command()
@user_errors
def serve(
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. backend=native"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: loopback only)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TTC_API_KEY",
                                          help="Require 'Authorization: Bearer KEY'."),
    verbose: bool = typer.Option(False, "--verbose", help="Log every request."),
    max_width: int = typer.Option(64, "--max-width",
                                  help="Largest N in model '<strategy>-N', n, and prompts "
                                       "in one raw request."),
    max_tokens: int = typer.Option(32768, "--max-tokens",
                                   help="Largest max_tokens a request may ask (a reply's "
                                        "length) and largest search budget (ttc.budget, "
                                        "'@B' in the model name)."),
    max_connections: int = typer.Option(256, "--max-connections",
                                        help="Connections open at once; more get a 503."),
    read_timeout: float = typer.Option(30.0, "--read-timeout",
                                       help="Seconds a connection may stay silent."),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes",
                                       help="Largest request body."),
) -> None:
    """Serve strategies as an OpenAI-compatible API (model = strategy[-N][@B], or raw)."""
    from ttc.server import ServerLimits, make_server

    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be in [0, 65535]; got {port}.")
    limits = ServerLimits(max_width=max_width, max_tokens=max_tokens,
                          max_connections=max_connections, read_timeout_s=read_timeout,
                          max_body_bytes=max_body_bytes)
    config = run_config(overrides or [])
    try:
        server = make_server(config, host=host, port=port, api_key=api_key, verbose=verbose,
                             limits=limits)
    except ConfigError as err:
        if isinstance(err.__cause__, OSError):      # the address could not be bound
            raise UsageError(f"{str(err).rstrip('.')}; choose another --host or --port "
                             f"(or stop what is using it).") from err
        raise
    for line in server.warnings():
        typer.echo(line, err=True)
    typer.echo(f"ttc serve: {server.url} (backend {config.backend.name}; GET /v1/models)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
