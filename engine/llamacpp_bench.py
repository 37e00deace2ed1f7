"""The llama.cpp column of ``ttc bench engine``: the same shapes, run by llama.cpp's own bench.

Contract: llama.cpp is what CPU users run instead of ttc, so the engine bench can put it
beside the native engine. Nothing of llama.cpp ships with ttc: ``scripts/build_llamacpp.sh``
builds its ``llama-batched-bench`` and ``llama-quantize`` outside the repository, and
:func:`find_llamacpp` looks for them in ``$TTC_LLAMACPP_BIN``, else in
``<ttc cache>/llamacpp/build/bin`` (the script's default; the cache root is
:func:`ttc.engine.loader.cache_dir`). No build there: no column, and a note that says
where to put one. ``$TTC_LLAMACPP_BIN`` set to a folder without both tools is a
``ValueError`` naming the folder.

:func:`measure_llamacpp_shapes` runs one ``llama-batched-bench`` for all branch counts:

    llama-batched-bench -m MODEL.gguf -c P+max(B)*S -npp P -ntg S -npl B1,B2 -pps -kvu -t T

one prompt of ``P`` tokens computed once and shared by ``B`` sequences (``-pps``; ``-kvu``:
one KV buffer for all of them, as the native engine's pages are), each decoding ``S``
tokens, on ``T`` threads. Its prompt is ``P`` random token ids, not the bench's question,
and every sequence decodes exactly ``S`` tokens (no sampling, no early stop): the same
amount of work, not the same tokens. The model is the embedded SmolLM2-135M's Q4_1 GGUF
requantized by ``llama-quantize --allow-requantize`` to the bench's dtype
(:data:`GGUF_TYPES`: float32 -> F32, bfloat16 -> BF16), which holds the same dequantized
weights the native engine loads; the file is made once and kept under
``<ttc cache>/llamacpp/models``.

Figures per branch count, from its table (:func:`parse_batched_bench`): ``seconds`` is its
``T s`` (prefill + decode, model load excluded), ``generated = B * S``, ``prefill_seconds``
(``T_PP s``) and ``decode_tokens_per_s`` (``S_TG t/s``).
Must NOT know: strategies, rewards, the native engine.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

BIN_ENV = "TTC_LLAMACPP_BIN"
TOOLS = ("llama-batched-bench", "llama-quantize")
# torch dtype name -> llama-quantize's output type.
GGUF_TYPES = {"float32": "F32", "bfloat16": "BF16"}
BUILD_HINT = "scripts/build_llamacpp.sh builds them"


def default_bin_dir() -> Path:
    """Where ``scripts/build_llamacpp.sh`` puts the tools when given no folder."""
    from ttc.engine.loader import cache_dir  # noqa: PLC0415

    return cache_dir() / "llamacpp" / "build" / "bin"


def _missing_tools(folder: Path) -> list[str]:
    return [t for t in TOOLS if not ((folder / t).is_file() and os.access(folder / t, os.X_OK))]


def find_llamacpp() -> tuple[Path | None, str]:
    """The folder holding both tools, or ``(None, why the column is skipped)``.

    Raises ``ValueError`` when ``$TTC_LLAMACPP_BIN`` is set to a folder without them: the
    user asked for that build, so a wrong path is an error, not a silent skip.
    """
    explicit = os.environ.get(BIN_ENV)
    if explicit:
        folder = Path(explicit).expanduser()
        missing = _missing_tools(folder)
        if missing:
            raise ValueError(
                f"{BIN_ENV} must be a folder holding llama.cpp's executable {' and '.join(TOOLS)}; "
                f"got {explicit!r}, which lacks {', '.join(missing)} ({BUILD_HINT}).")
        return folder, ""
    folder = default_bin_dir()
    if not _missing_tools(folder):
        return folder, ""
    return None, (f"llama.cpp column skipped: no llama.cpp build (set {BIN_ENV} to the folder "
                  f"holding {' and '.join(TOOLS)}, or run scripts/build_llamacpp.sh, which "
                  f"puts them in {folder}).")


def gguf_type(dtype: str) -> str:
    """llama-quantize's type for a torch dtype name; ``ValueError`` for any other name."""
    if dtype not in GGUF_TYPES:
        raise ValueError(f"the llama.cpp column runs in {' or '.join(GGUF_TYPES)}; "
                         f"got dtype {dtype!r}.")
    return GGUF_TYPES[dtype]


def gguf_for_dtype(bin_dir: Path, dtype: str, *, source: Path | None = None,
                   timeout_s: float = 600.0) -> Path:
    """``source`` (default: the embedded model's Q4_1 GGUF) requantized to ``dtype``, made
    once with ``llama-quantize --allow-requantize`` and kept in ttc's cache.

    The cache key is the source's absolute path, size and mtime (as the loader's
    conversions); the file is written under a temporary name and renamed into place.
    """
    from ttc.engine.loader import cache_dir, embedded_gguf_path  # noqa: PLC0415

    kind = gguf_type(dtype)
    src = Path(source) if source is not None else embedded_gguf_path()
    st = src.stat()
    key = hashlib.sha256(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_dir() / "llamacpp" / "models" / f"{src.stem}-{kind}-{key}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    cmd = [str(bin_dir / "llama-quantize"), "--allow-requantize", str(src), str(tmp), kind]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not tmp.is_file():
            raise RuntimeError(f"llama-quantize could not make a {kind} GGUF from {src} "
                               f"(exit {proc.returncode}): {_last_line(proc)}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def batched_bench_command(bin_dir: Path, gguf: Path, *, prompt_tokens: int,
                          branch_counts: Sequence[int], new_tokens: int,
                          threads: int) -> list[str]:
    """The ``llama-batched-bench`` command for these shapes (see the module docstring).

    ``-c`` is the KV the largest shape needs with a shared prompt and unified KV:
    llama-batched-bench silently skips a shape whose need exceeds it.
    """
    context = prompt_tokens + max(branch_counts) * new_tokens
    return [str(bin_dir / "llama-batched-bench"), "-m", str(gguf), "-c", str(context),
            "-npp", str(prompt_tokens), "-ntg", str(new_tokens),
            "-npl", ",".join(str(b) for b in branch_counts), "-pps", "-kvu", "-t", str(threads)]


@dataclass(frozen=True, slots=True)
class BatchedBenchRow:
    """One row of llama-batched-bench's table (its column names in comments)."""

    prompt_tokens: int           # PP
    new_tokens: int              # TG: per sequence
    branches: int                # B: parallel sequences
    kv_tokens: int               # N_KV: tokens the shape needs in the KV cache
    prefill_seconds: float       # T_PP s
    prefill_tokens_per_s: float  # S_PP t/s
    decode_seconds: float        # T_TG s
    decode_tokens_per_s: float   # S_TG t/s: B * TG / T_TG
    seconds: float               # T s: T_PP + T_TG
    tokens_per_s: float          # S t/s: (PP + B * TG) / T with a shared prompt


_COLUMNS = {"PP": "prompt_tokens", "TG": "new_tokens", "B": "branches", "N_KV": "kv_tokens",
            "T_PP s": "prefill_seconds", "S_PP t/s": "prefill_tokens_per_s",
            "T_TG s": "decode_seconds", "S_TG t/s": "decode_tokens_per_s",
            "T s": "seconds", "S t/s": "tokens_per_s"}
_INT_FIELDS = {"prompt_tokens", "new_tokens", "branches", "kv_tokens"}


def parse_batched_bench(text: str) -> list[BatchedBenchRow]:
    """The rows of llama-batched-bench's Markdown table in ``text`` (its whole output).

    Columns are found by their header names, so a reordered or wider table still parses;
    a header without every column of :class:`BatchedBenchRow` is a ``ValueError``. Lines
    outside the table (model loading, perf counters) are ignored; no table gives ``[]``.
    """
    header: dict[str, int] | None = None
    rows: list[BatchedBenchRow] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if "PP" in cells and "TG" in cells:
            missing = [name for name in _COLUMNS if name not in cells]
            if missing:
                raise ValueError(f"llama-batched-bench's table lacks the column(s) "
                                 f"{', '.join(missing)}; its header was {line!r}.")
            header = {name: cells.index(name) for name in _COLUMNS}
            continue
        if header is None or set("".join(cells)) <= set("-: "):
            continue                                   # not in a table yet, or the rule line
        values: dict[str, Any] = {}
        for name, field in _COLUMNS.items():
            cell = cells[header[name]]
            try:
                values[field] = int(cell) if field in _INT_FIELDS else float(cell)
            except ValueError as err:
                raise ValueError(f"llama-batched-bench's {name} column holds {cell!r}, not a "
                                 f"number, in the row {line!r}.") from err
        rows.append(BatchedBenchRow(**values))
    return rows


def measure_llamacpp_shapes(*, bin_dir: Path, dtype: str, prompt_tokens: int,
                            branch_counts: Sequence[int], new_tokens: int, threads: int,
                            timeout_s: float = 1800.0
                            ) -> tuple[list[dict[str, Any]] | None, str]:
    """One llama-batched-bench run for every branch count; (figures in order or None, a note).

    Figures per count: ``{"seconds", "generated", "prefill_seconds",
    "decode_tokens_per_s", "kv_tokens"}``. A failed run, or a table without a row for
    each count, gives ``None`` and a note with the reason.
    """
    gguf = gguf_for_dtype(bin_dir, dtype)
    cmd = batched_bench_command(bin_dir, gguf, prompt_tokens=prompt_tokens,
                                branch_counts=branch_counts, new_tokens=new_tokens,
                                threads=threads)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"llama.cpp column skipped: llama-batched-bench took over {timeout_s:.0f} s."
    if proc.returncode != 0:
        return None, f"llama.cpp column failed (exit {proc.returncode}): {_last_line(proc)}"
    rows = {(r.prompt_tokens, r.new_tokens, r.branches): r
            for r in parse_batched_bench(proc.stdout + "\n" + proc.stderr)}
    figures = []
    for b in branch_counts:
        row = rows.get((prompt_tokens, new_tokens, b))
        if row is None:
            return None, (f"llama.cpp column failed: llama-batched-bench printed no row for "
                          f"PP={prompt_tokens}, TG={new_tokens}, B={b} ({_last_line(proc)}).")
        figures.append({"seconds": row.seconds, "generated": b * new_tokens,
                        "prefill_seconds": row.prefill_seconds,
                        "decode_tokens_per_s": row.decode_tokens_per_s,
                        "kv_tokens": row.kv_tokens})
    note = (f"llama.cpp via {bin_dir}/llama-batched-bench: {gguf_type(dtype)} GGUF ({gguf.name}, "
            f"requantized from the embedded Q4_1 GGUF), one shared prompt of {prompt_tokens} "
            f"random tokens (-pps, unified KV -kvu), each sequence decodes exactly "
            f"{new_tokens} tokens (no sampling, no early stop), {threads} threads; seconds = "
            f"its T s (prefill + decode; model load excluded).")
    return figures, note


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr or "").strip().splitlines() or (proc.stdout or "").strip().splitlines()
    return lines[-1] if lines else "(no output)"
