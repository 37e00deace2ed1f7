"""The hardware decision (ttc.engine.hardware) for machines we do not have, and the native
path with the CPU's bf16 support reported absent (TTC_CPU_BF16=0): what an AVX2 laptop,
an AMD CPU before Zen 4 or an ARM server without BF16 runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakes import ByteTokenizer, tiny_hf_model

from ttc.engine import hardware
from ttc.engine.hardware import Capabilities, decide
from ttc.registry import ConfigError

ROOT = Path(__file__).resolve().parents[2]

# Capability flags of the machines users run ttc on.
SAPPHIRE_RAPIDS = Capabilities(cpu_isa="AVX512", cpu_bf16=True, cpu_bf16_native=True, onednn=True,
                               x86=True)
ZEN4 = SAPPHIRE_RAPIDS                                   # AVX512-BF16, same flags for ttc
SKYLAKE_X = Capabilities(cpu_isa="AVX512", cpu_bf16=True, cpu_bf16_native=False, onednn=True,
                         x86=True)
ZEN3 = Capabilities(cpu_isa="AVX2", cpu_bf16=False, onednn=True, x86=True)
GRAVITON3 = Capabilities(cpu_isa="SVE256", cpu_bf16=True, cpu_bf16_native=True, onednn=True)
GRAVITON2 = Capabilities(cpu_isa="DEFAULT", cpu_bf16=False, onednn=True)
NO_ONEDNN = Capabilities(cpu_isa="AVX2", x86=True)
H100 = Capabilities(cuda=True, cuda_bf16=True, triton=True, cpu_isa="AVX512", cpu_bf16=True,
                    cpu_bf16_native=True, onednn=True)
T4 = Capabilities(cuda=True, cuda_bf16=False, triton=True, cpu_isa="AVX2", onednn=True)
APPLE = Capabilities(mps=True, cpu_isa="DEFAULT", cpu_bf16=True, cpu_bf16_native=True,
                     onednn=False)


@pytest.mark.parametrize("caps, dtype, pack", [
    (SAPPHIRE_RAPIDS, torch.bfloat16, True),
    (SKYLAKE_X, torch.float32, True),       # bf16 runs, emulated: float32 is faster
    (ZEN3, torch.float32, True),            # no bf16 matmuls at all; oneDNN float32 packed
    (GRAVITON3, torch.bfloat16, True),
    (GRAVITON2, torch.float32, False),      # float32 packing is x86 only (untried on ARM)
    (NO_ONEDNN, torch.float32, False),
], ids=["amx", "avx512-no-bf16", "avx2", "arm-bf16", "arm-no-bf16", "no-onednn"])
def test_auto_on_cpus(caps, dtype, pack):
    choice = decide(caps)
    assert choice.device == torch.device("cpu")
    assert (choice.dtype, choice.pack_linear, choice.attention) == (dtype, pack, "torch")
    # one line says why float32 was chosen over bf16, and only then
    assert (choice.note is not None) == (dtype is torch.float32)
    if choice.note:
        assert "\n" not in choice.note and caps.cpu_isa in choice.note
        assert "backend.dtype" in choice.note


def test_gpus_and_apple():
    h100 = decide(H100)
    assert (h100.device.type, h100.dtype, h100.attention, h100.pack_linear) == (
        "cuda", torch.bfloat16, "triton", False)
    t4 = decide(T4)
    assert (t4.dtype, t4.attention) == (torch.float16, "triton")
    mps = decide(APPLE)
    assert (mps.device.type, mps.dtype, mps.attention, mps.pack_linear) == (
        "mps", torch.float32, "torch", False)
    # a CUDA machine can still be told to use its CPU: then the CPU rules apply
    cpu = decide(H100, device="cpu")
    assert (cpu.device.type, cpu.dtype, cpu.pack_linear) == ("cpu", torch.bfloat16, True)


def test_explicit_bf16_on_a_cpu_that_emulates_it_runs_packed():
    choice = decide(SKYLAKE_X, dtype="bfloat16")
    assert (choice.dtype, choice.pack_linear, choice.note) == (torch.bfloat16, True, None)


@pytest.mark.parametrize("caps, kwargs, words", [
    (ZEN3, {"dtype": "bfloat16"},
     ["backend.dtype='bfloat16'", "AVX2", "choose one of: auto, float32."]),
    (GRAVITON2, {"dtype": "bfloat16"}, ["backend.dtype='bfloat16'", "auto, float32."]),
    (SAPPHIRE_RAPIDS, {"dtype": "float16"},
     ["backend.dtype='float16'", "choose one of: auto, float32, bfloat16."]),
    (T4, {"dtype": "bfloat16"}, ["backend.dtype='bfloat16'", "auto, float16, float32"]),
    (ZEN3, {"dtype": "int8"}, ["backend.dtype must be one of auto, float32, bfloat16, float16",
                               "'int8'"]),
    (ZEN3, {"device": "cuda"}, ["backend.device='cuda' is not available", "auto, cpu."]),
    (ZEN3, {"device": "mps"}, ["backend.device='mps'", "auto, cpu."]),
    (ZEN3, {"device": "gpu0"}, ["backend.device must be auto or a torch device", "'gpu0'"]),
    (ZEN3, {"attention": "triton"}, ["backend.attention='triton' needs a CUDA device"]),
    (Capabilities(cuda=True, cuda_bf16=True), {"attention": "triton"},
     ["backend.attention='triton' needs the triton package"]),
    (ZEN3, {"attention": "flash"}, ["backend.attention must be one of auto, torch, triton"]),
], ids=["bf16-avx2", "bf16-arm", "fp16-cpu", "bf16-t4", "bad-dtype", "no-cuda", "no-mps",
        "bad-device", "triton-cpu", "triton-missing", "bad-attention"])
def test_a_choice_the_hardware_cannot_run_is_one_line_naming_it(caps, kwargs, words):
    with pytest.raises(ConfigError) as err:
        decide(caps, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message


def test_bf16_support_can_be_reported_absent(monkeypatch):
    real = hardware.detect()
    monkeypatch.setenv("TTC_CPU_BF16", "0")
    hidden = hardware.detect()
    assert not hidden.cpu_bf16 and not hidden.cpu_bf16_native
    assert hidden.cpu_isa == real.cpu_isa
    assert not hardware.can_pack_linear(torch.bfloat16, "cpu")
    choice = hardware.choose()
    if choice.device.type == "cpu":
        assert choice.dtype is torch.float32
        assert choice.pack_linear == (real.onednn and real.x86)
    monkeypatch.setenv("TTC_CPU_BF16", "maybe")
    with pytest.raises(ConfigError, match="TTC_CPU_BF16 must be 0 .* or 1 .*got 'maybe'"):
        hardware.detect()


@pytest.mark.parametrize("hide", [False, True], ids=["detected", "bf16-absent"])
def test_bf16_model_without_cpu_support_runs_unpacked(monkeypatch, hide):
    """A bf16 model on a CPU whose oneDNN cannot run bf16 keeps plain weights (no oneDNN
    reorder, which raises there) and still computes close to float32."""
    from ttc.engine.native.engine import NativeEngine

    if hide:
        monkeypatch.setenv("TTC_CPU_BF16", "0")
    cfg, hf = tiny_hf_model("llama", seed=1)
    eng = NativeEngine.from_hf(cfg, hf.state_dict(), ByteTokenizer(), dtype=torch.bfloat16,
                               attention="torch", page_size=8, kv_memory_gb=0.01)
    assert eng.model.packed == hardware.can_pack_linear(torch.bfloat16, "cpu")
    if hide:
        assert not eng.model.packed
        assert not any(w.qkv.is_mkldnn for w in eng.model.layers)
    ref = NativeEngine.from_hf(cfg, hf.state_dict(), ByteTokenizer(), dtype=torch.float32,
                               attention="torch", page_size=8, kv_memory_gb=0.01)
    ids = list(range(3, 40))
    hb, _ = eng.extend(ids, [7, 8, 9])
    hf32, _ = ref.extend(ids, [7, 8, 9])
    lb, lf = eng.logits(hb), ref.logits(hf32)
    assert torch.allclose(lb, lf, atol=0.15, rtol=0.05), (lb - lf).abs().max()
    eng.close()
    ref.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TTC_CPU_BF16"}
    env.update(extra)
    return env


def test_ttc_solve_without_cpu_bf16_picks_float32_with_one_line():
    """`make run`'s command on a CPU without bf16: float32, one line saying so, an answer."""
    proc = subprocess.run(
        [sys.executable, "-m", "ttc.cli", "solve", "What is 3 + 5?", "--strategy", "astar",
         "--budget", "96", "--quiet"],
        capture_output=True, text=True, timeout=600, env=_env(TTC_CPU_BF16="0"), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    notes = [line for line in proc.stderr.splitlines() if "dtype auto = float32" in line]
    assert len(notes) == 1, proc.stderr[-2000:]
    assert "cannot run bf16 matmuls" in notes[0]
    assert proc.stdout.startswith("answer: ")


def test_ttc_solve_explicit_bf16_without_cpu_support_is_one_line_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "ttc.cli", "solve", "What is 3 + 5?", "backend.dtype=bfloat16"],
        capture_output=True, text=True, timeout=300, env=_env(TTC_CPU_BF16="0"), cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: backend.dtype='bfloat16' is not "
                                                   "supported on this CPU ("), proc.stderr
    assert lines[0].endswith("choose one of: auto, float32.")


def test_engine_suites_pass_with_cpu_bf16_reported_absent():
    """The native engine's own test files, run again as an AVX2 machine would run them."""
    files = ["tests/engine/test_native_model.py", "tests/engine/test_native_engine.py",
             "tests/engine/test_continuous_batching.py", "tests/engine/test_sampling.py",
             "tests/engine/test_thinking_budget_native.py", "tests/engine/test_score_tokens.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:randomly",
                           *files], capture_output=True, text=True, timeout=900,
                          env=_env(TTC_CPU_BF16="0"), cwd=ROOT)
    tail = proc.stdout[-1500:]
    assert proc.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail
