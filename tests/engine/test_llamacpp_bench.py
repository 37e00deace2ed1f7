"""The llama.cpp column of ``ttc bench engine`` (engine/llamacpp_bench.py).

Default suite: the table parser on output captured from a real llama-batched-bench run
(tests/engine/data/llamacpp_batched_bench.txt), finding the build, the command, and the
column's plumbing through stand-in executables (shell scripts that print the captured
output). Marked ``llamacpp`` (scripts/ci_llamacpp.sh): the real build end to end.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ttc.engine import bench as eb
from ttc.engine import llamacpp_bench as lb
from ttc.types import BenchReport

# stdout of `llama-batched-bench -m <SmolLM2-135M F32 GGUF> -c 512 -npp 256 -ntg 16 -npl 4,16
# -pps -kvu -t 2` (llama.cpp of llama-cpp-python 0.3.36), captured on a busy 2-core machine.
SAMPLE = Path(__file__).parent / "data" / "llamacpp_batched_bench.txt"
PRINTED_B4 = (7.652, 4.99, 20.484)       # T_PP s, S_TG t/s, T s of its B=4 row
PRINTED_B16 = (3.060, 25.87, 12.956)     # ... and of its B=16 row
# This machine's build, if any, read before any test changes the environment.
REAL_BIN, _ = lb.find_llamacpp()


@pytest.fixture(autouse=True)
def _own_cache(request, monkeypatch, tmp_path):
    """No default-suite test sees this machine's llama.cpp build or writes into its cache
    (the real-build test uses both: a fresh cache would convert the model again)."""
    if request.node.get_closest_marker("llamacpp") is None:
        monkeypatch.delenv(lb.BIN_ENV, raising=False)
        monkeypatch.setenv("TTC_CACHE_DIR", str(tmp_path / "cache"))


def _stand_in_tools(folder: Path, *, table: str) -> Path:
    """Executables named like llama.cpp's: quantize writes its output file, bench prints
    ``table`` (plus its arguments on stderr, as llama.cpp logs there)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.txt").write_text(table)
    scripts = {
        "llama-quantize": '#!/bin/sh\necho "quantized $2 as $4" > "$3"\n',
        "llama-batched-bench": f'#!/bin/sh\necho "args: $*" >&2\ncat "{folder}/table.txt"\n'}
    for name, body in scripts.items():
        path = folder / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return folder


# -- the parser ----------------------------------------------------------------------------

def test_parser_reads_every_row_of_a_real_run():
    rows = lb.parse_batched_bench(SAMPLE.read_text())
    assert [(r.prompt_tokens, r.new_tokens, r.branches) for r in rows] == [(256, 16, 4),
                                                                           (256, 16, 16)]
    first, second = rows
    assert (first.kv_tokens, second.kv_tokens) == (256 + 4 * 16, 256 + 16 * 16)
    # The captured figures, as printed (see the fixture file).
    assert (first.prefill_seconds, first.decode_tokens_per_s, first.seconds) == PRINTED_B4
    assert (second.prefill_seconds, second.decode_tokens_per_s, second.seconds) == PRINTED_B16
    for r in rows:   # its columns agree with each other: T = T_PP + T_TG (3 decimals printed)
        assert abs(r.seconds - (r.prefill_seconds + r.decode_seconds)) <= 0.002


def test_parser_finds_columns_by_name_and_ignores_other_lines():
    text = ("load_tensors: loading model\n"
            "| B | PP | TG | N_KV | T s | S t/s | T_PP s | S_PP t/s | T_TG s | S_TG t/s |\n"
            "|---|----|----|------|-----|-------|--------|----------|--------|----------|\n"
            "| 2 | 10 |  3 |   16 | 1.5 | 10.67 |  0.500 |    20.00 |  1.000 |     6.00 |\n"
            "llama_perf_context_print: total time = 1 ms\n")
    (row,) = lb.parse_batched_bench(text)
    assert (row.branches, row.prompt_tokens, row.new_tokens) == (2, 10, 3)
    assert (row.seconds, row.prefill_seconds, row.decode_tokens_per_s) == (1.5, 0.5, 6.0)


def test_parser_gives_no_rows_without_a_table():
    assert lb.parse_batched_bench("main: error: unable to load model\n") == []


def test_parser_names_a_missing_column_and_a_bad_cell():
    with pytest.raises(ValueError, match=r"lacks the column\(s\) N_KV"):
        lb.parse_batched_bench("| PP | TG | B | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |\n")
    header = SAMPLE.read_text().split("\n")
    table = [ln for ln in header if ln.startswith("|")][:2]
    with pytest.raises(ValueError, match=r"T s column holds 'n/a'"):
        lb.parse_batched_bench("\n".join(table) + "\n|   256 |     16 |    4 |    320 |    "
                               "0.500 |   512.00 |    1.000 |    64.00 |      n/a |  1.0 |\n")


# -- finding the build, the command, the dtype ---------------------------------------------

def test_no_build_gives_no_folder_and_a_note_saying_where_to_put_one():
    folder, note = lb.find_llamacpp()
    assert folder is None
    assert note.startswith("llama.cpp column skipped: no llama.cpp build")
    assert lb.BIN_ENV in note and "scripts/build_llamacpp.sh" in note
    assert str(lb.default_bin_dir()) in note


def test_a_build_in_the_default_folder_is_found(tmp_path):
    _stand_in_tools(lb.default_bin_dir(), table="")
    assert lb.find_llamacpp() == (lb.default_bin_dir(), "")


def test_a_wrong_bin_folder_is_one_error_naming_it(monkeypatch, tmp_path):
    half = tmp_path / "half"
    half.mkdir()
    (half / "llama-quantize").write_text("")        # not executable, and no bench at all
    monkeypatch.setenv(lb.BIN_ENV, str(half))
    with pytest.raises(ValueError, match=rf"TTC_LLAMACPP_BIN must be .*got '{half}', which "
                                         rf"lacks llama-batched-bench, llama-quantize"):
        lb.find_llamacpp()


def test_the_bench_refuses_a_wrong_bin_folder_before_timing_anything(monkeypatch, tmp_path):
    monkeypatch.setenv(lb.BIN_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="TTC_LLAMACPP_BIN"):
        eb.run(quick=True, backends=("native", "llamacpp"))   # raises before loading a model


def test_dtype_must_be_one_llama_cpp_runs():
    assert lb.gguf_type("float32") == "F32" and lb.gguf_type("bfloat16") == "BF16"
    with pytest.raises(ValueError, match=r"float32 or bfloat16; got dtype 'auto'"):
        lb.gguf_type("auto")


def test_command_shares_one_prompt_and_sizes_the_kv_for_the_largest_shape(tmp_path):
    cmd = lb.batched_bench_command(tmp_path, tmp_path / "m.gguf", prompt_tokens=1024,
                                   branch_counts=(16, 64), new_tokens=64, threads=2)
    assert cmd[0] == str(tmp_path / "llama-batched-bench")
    args = dict(zip(cmd[1::2], cmd[2::2]))
    assert args["-c"] == str(1024 + 64 * 64)          # shared prompt + every sequence's tokens
    assert (args["-npp"], args["-ntg"], args["-npl"], args["-t"]) == ("1024", "64", "16,64", "2")
    assert "-pps" in cmd and "-kvu" in cmd


def test_the_gguf_is_made_once_per_dtype_and_source(tmp_path):
    tools = _stand_in_tools(tmp_path / "bin", table="")
    source = tmp_path / "model.Q4_1.gguf"
    source.write_text("weights")
    f32 = lb.gguf_for_dtype(tools, "float32", source=source)
    assert f32.read_text() == f"quantized {source} as F32\n"
    f32.write_text("kept")                             # a second call reuses the file
    assert lb.gguf_for_dtype(tools, "float32", source=source).read_text() == "kept"
    bf16 = lb.gguf_for_dtype(tools, "bfloat16", source=source)
    assert bf16 != f32 and bf16.read_text().endswith("as BF16\n")
    assert not list(f32.parent.glob(".*.tmp"))


# -- the column ----------------------------------------------------------------------------

def _column(tools: Path, *, branch_counts=(4, 16), native=None) -> BenchReport:
    report = BenchReport(name="engine")
    report.metrics.update(native or {})
    eb._add_llamacpp_column(report, bin_dir=tools, note="", dtype="float32", prompt_tokens=256,
                            branch_counts=branch_counts, new_tokens=16, threads=2)
    return report


def test_the_column_reports_each_shape_like_the_vllm_column(tmp_path):
    tools = _stand_in_tools(tmp_path / "bin", table=SAMPLE.read_text())
    report = _column(tools, native={"tokens_per_s_native": 50.0, "tokens_per_s_native_b16": 80.0})
    m = report.metrics
    rows = lb.parse_batched_bench(SAMPLE.read_text())
    for sfx, row in (("", rows[0]), ("_b16", rows[1])):
        generated = row.branches * 16
        assert m[f"generated_tokens_llamacpp{sfx}"] == generated
        assert m[f"seconds_llamacpp{sfx}"] == round(row.seconds, 3)
        assert m[f"tokens_per_s_llamacpp{sfx}"] == round(generated / row.seconds, 2)
        assert m[f"prefill_seconds_llamacpp{sfx}"] == round(row.prefill_seconds, 3)
        assert m[f"decode_tokens_per_s_llamacpp{sfx}"] == round(row.decode_tokens_per_s, 2)
    assert report.ratios == {
        "tokens_per_s_llamacpp_over_native": round(4 * 16 / rows[0].seconds / 50.0, 3),
        "tokens_per_s_llamacpp_over_native_b16": round(16 * 16 / rows[1].seconds / 80.0, 3)}
    assert m["gguf_type_llamacpp"] == "F32" and m["load_avg_1m_llamacpp"] >= 0
    (note,) = report.notes
    assert note.startswith(f"llama.cpp via {tools}/llama-batched-bench: F32 GGUF")


def test_a_missing_shape_in_its_table_is_a_note_and_no_column(tmp_path):
    tools = _stand_in_tools(tmp_path / "bin", table=SAMPLE.read_text())
    report = _column(tools, branch_counts=(4, 64))
    assert list(report.metrics) == ["load_avg_1m_llamacpp"] and not report.ratios
    (note,) = report.notes
    assert note.startswith("llama.cpp column failed: llama-batched-bench printed no row for "
                           "PP=256, TG=16, B=64")


def test_a_failing_bench_is_a_note_with_its_last_line(tmp_path):
    tools = _stand_in_tools(tmp_path / "bin", table="")
    (tools / "llama-batched-bench").write_text(
        "#!/bin/sh\necho 'main: error: unable to load model' >&2\nexit 1\n")
    report = _column(tools)
    assert report.notes == ["llama.cpp column failed (exit 1): main: error: unable to load model"]
    assert not report.ratios


def test_without_a_build_the_column_is_only_a_note():
    report = BenchReport(name="engine")
    report.metrics["tokens_per_s_native"] = 50.0
    folder, note = eb._find_llamacpp(("native", "llamacpp"))
    eb._add_llamacpp_column(report, bin_dir=folder, note=note, dtype="float32",
                            prompt_tokens=256, branch_counts=(4, 16), new_tokens=16, threads=2)
    assert report.metrics == {"tokens_per_s_native": 50.0} and not report.ratios
    assert report.notes == [note] and note.startswith("llama.cpp column skipped")
    assert eb._find_llamacpp(("native",)) == (None, "")      # not asked for: not looked for


# -- the real build (scripts/ci_llamacpp.sh) ------------------------------------------------

@pytest.mark.llamacpp
def test_the_real_llama_cpp_runs_the_quick_shapes_beside_the_native_engine(monkeypatch):
    if REAL_BIN is None:
        pytest.skip("no llama.cpp build: set TTC_LLAMACPP_BIN (scripts/build_llamacpp.sh)")
    monkeypatch.setenv(lb.BIN_ENV, str(REAL_BIN))
    report = eb.run(quick=True, backends=("native", "llamacpp"))
    m, (p, (b1, b2), s) = report.metrics, eb.QUICK_SHAPES
    for sfx, b in (("", b1), (f"_b{b2}", b2)):
        assert m[f"generated_tokens_llamacpp{sfx}"] == b * s
        assert m[f"seconds_llamacpp{sfx}"] > m[f"prefill_seconds_llamacpp{sfx}"] > 0
        assert m[f"decode_tokens_per_s_llamacpp{sfx}"] > 0
        ratio = report.ratios[f"tokens_per_s_llamacpp_over_native{sfx}"]
        assert abs(ratio - m[f"tokens_per_s_llamacpp{sfx}"] / m[f"tokens_per_s_native{sfx}"]) < 2e-3
    assert m["gguf_type_llamacpp"] == lb.gguf_type(m["dtype"])   # the native engine's dtype
