"""What the hardware does well, and the engine settings that follow from it.

Contract: :func:`detect` reads this machine's capabilities from torch once
(:class:`Capabilities`: CUDA and its bf16, Apple's MPS, the CPU's vector ISA, whether
oneDNN can run bf16 matmuls here and whether the CPU has bf16 dot-product instructions);
:func:`decide` is a pure function of those flags and the user's ``device`` / ``dtype`` /
``attention`` settings, returning a :class:`Choice`: the device, the dtype ``auto``
means, whether linear weights are packed for oneDNN, and the attention implementation.
Every CPU-specific op in the engine is guarded: oneDNN weight packing by
``Choice.pack_linear`` (or :func:`can_pack_linear`), torch's CPU flash-attention op by
the tensors being on the CPU; no path assumes the machine it was written on::

    caps = detect()                       # e.g. cpu_isa="AVX2", cpu_bf16=False
    choice = decide(caps, device="auto", dtype="auto")
    choice.dtype, choice.pack_linear      # torch.float32, False
    choice.note                           # "dtype auto = float32: this CPU (AVX2) ..."

``dtype="auto"``: CUDA -> bfloat16 where the GPU supports it, else float16; MPS ->
float32; CPU -> bfloat16 only where the CPU has bf16 dot products (AVX512-BF16, AMX,
ARM BF16), else float32 (without them bf16 matmuls are emulated: measured 31 tok/s in
bf16 against 75-80 in float32 on a 2-core AVX2 EPYC). An explicit choice the hardware
cannot run is one :class:`~ttc.registry.ConfigError` naming the setting and what this
machine supports.

Testing machines you do not have: set ``TTC_CPU_BF16=0`` and :func:`detect` reports the
CPU's bf16 support absent (as on an AVX2 or ARM-without-BF16 CPU), so the float32,
unpacked path runs on any machine.
Must NOT know: models, tokens, strategies, rewards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import lru_cache

import torch

from ttc.registry import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
ATTENTION_IMPLS = ("auto", "torch", "triton")
HIDE_BF16_ENV = "TTC_CPU_BF16"       # "0": report the CPU's bf16 support absent


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """Capability flags of one machine (what :func:`decide` reads; tests build their own)."""

    cuda: bool = False
    cuda_bf16: bool = False      # the GPU computes bf16 natively (Ampere and newer)
    mps: bool = False            # Apple's Metal backend
    cpu_isa: str = "DEFAULT"     # torch.backends.cpu.get_cpu_capability(): AVX512, AVX2, SVE256, ...
    cpu_bf16: bool = False       # oneDNN runs bf16 matmuls and packs bf16 weights here
    cpu_bf16_native: bool = False  # bf16 dot-product instructions (AVX512-BF16, AMX, ARM BF16)
    onednn: bool = False         # torch built with oneDNN and its weight-reorder op present
    triton: bool = False         # the triton package imports (checked only with CUDA)
    x86: bool = False            # an x86-64 CPU (oneDNN's float32 packing is used there)

    def describe_cpu(self) -> str:
        if self.cpu_bf16_native:
            bf16 = "native bf16"
        elif self.cpu_bf16:
            bf16 = "bf16 emulated by oneDNN"
        else:
            bf16 = "no bf16 matmuls"
        return f"{self.cpu_isa}, {bf16}"


@dataclass(frozen=True, kw_only=True)
class Choice:
    """The engine settings for this hardware."""

    device: torch.device
    dtype: torch.dtype
    pack_linear: bool            # reorder linear weights once into oneDNN's blocked layout
    attention: str               # "torch" or "triton"
    note: str | None = None      # one line when ``auto`` chose float32 over bf16 on a CPU


@lru_cache(maxsize=1)
def _detect_torch() -> Capabilities:
    cuda = torch.cuda.is_available()
    cuda_bf16 = bool(cuda and torch.cuda.is_bf16_supported())
    mps_backend = getattr(torch.backends, "mps", None)
    mps = bool(mps_backend is not None and mps_backend.is_available())
    cpu_isa = torch.backends.cpu.get_cpu_capability()
    mkldnn = torch.backends.mkldnn.is_available()
    onednn = mkldnn and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    cpu_bf16 = bool(onednn and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if _is_x86():
        native = any(_cpu_flag(name) for name in ("_is_avx512_bf16_supported",
                                                   "_is_amx_tile_supported"))
    else:   # ARM and others: oneDNN reports bf16 only where the CPU has BF16 instructions
        native = cpu_bf16
    has_triton = False
    if cuda:        # Triton only runs on CUDA here; importing it costs start-up time elsewhere
        try:
            import triton  # noqa: F401, PLC0415
            has_triton = True
        except ImportError:
            pass
    return Capabilities(cuda=cuda, cuda_bf16=cuda_bf16, mps=mps, cpu_isa=cpu_isa,
                        cpu_bf16=cpu_bf16, cpu_bf16_native=bool(native and cpu_bf16),
                        onednn=onednn, triton=has_triton, x86=_is_x86())


def _is_x86() -> bool:
    import platform  # noqa: PLC0415

    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


def _cpu_flag(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if callable(fn) else False
    except RuntimeError:
        return False


def detect() -> Capabilities:
    """This machine's capabilities (read once), with ``TTC_CPU_BF16=0`` honoured."""
    caps = _detect_torch()
    flag = os.environ.get(HIDE_BF16_ENV)
    if flag is not None and flag not in ("0", "1"):
        raise ConfigError(f"{HIDE_BF16_ENV} must be 0 (report the CPU's bf16 support absent) "
                          f"or 1 (as detected); got {flag!r}.")
    if flag == "0":
        caps = replace(caps, cpu_bf16=False, cpu_bf16_native=False)
    return caps


def supported_dtypes(caps: Capabilities, device_type: str) -> tuple[str, ...]:
    """Dtype names the engine runs on ``device_type`` with these capabilities."""
    if device_type == "cuda":
        return ("bfloat16", "float16", "float32") if caps.cuda_bf16 else ("float16", "float32")
    if device_type == "mps":
        return ("float32", "float16")
    return ("float32", "bfloat16") if caps.cpu_bf16 else ("float32",)


def decide(caps: Capabilities, *, device: str = "auto", dtype: str = "auto",
           attention: str = "auto", setting: str = "backend") -> Choice:
    """The engine settings for ``caps`` and the user's choices (see the module docstring).

    ``setting`` prefixes the names in errors (``backend.dtype=...``).
    """
    dev = _decide_device(caps, device, setting)
    note = None
    if dtype == "auto":
        if dev.type == "cuda":
            dt = torch.bfloat16 if caps.cuda_bf16 else torch.float16
        elif dev.type == "cpu":
            dt = torch.bfloat16 if caps.cpu_bf16_native else torch.float32
            if dt is torch.float32:
                why = ("has no bf16 dot-product instructions, so bf16 would be slower"
                       if caps.cpu_bf16 else "cannot run bf16 matmuls")
                note = (f"dtype auto = float32: this CPU ({caps.cpu_isa}) {why} "
                        f"(set {setting}.dtype to choose).")
        else:
            dt = torch.float32
    elif dtype in DTYPES:
        allowed = supported_dtypes(caps, dev.type)
        if dtype not in allowed:
            where = (f"this CPU ({caps.describe_cpu()})" if dev.type == "cpu"
                     else f"this {dev.type} device")
            raise ConfigError(f"{setting}.dtype={dtype!r} is not supported on {where}; "
                              f"choose one of: auto, {', '.join(allowed)}.")
        dt = DTYPES[dtype]
    else:
        raise ConfigError(f"{setting}.dtype must be one of auto, {', '.join(DTYPES)}; "
                          f"got {dtype!r}.")
    if attention not in ATTENTION_IMPLS:
        raise ConfigError(f"{setting}.attention must be one of {', '.join(ATTENTION_IMPLS)}; "
                          f"got {attention!r}.")
    if attention == "triton" and not (dev.type == "cuda" and caps.triton):
        need = "a CUDA device" if dev.type != "cuda" else "the triton package"
        raise ConfigError(f"{setting}.attention='triton' needs {need}; this machine runs "
                          f"{dev.type}{' without triton' if dev.type == 'cuda' else ''} "
                          f"(choose auto or torch).")
    impl = attention if attention != "auto" else (
        "triton" if dev.type == "cuda" and caps.triton else "torch")
    return Choice(device=dev, dtype=dt, pack_linear=_packs(caps, dev, dt), attention=impl,
                  note=note)


def _packs(caps: Capabilities, device: torch.device, dtype: torch.dtype) -> bool:
    """oneDNN weight packing: bf16 where oneDNN runs bf16; float32 on x86 CPUs (oneDNN's
    packed float32 matmul took 0.52x the time of plain ``F.linear`` at 16 rows and 0.73x
    at 64, SmolLM2's layer shapes, one thread on an AVX-512 EPYC; not tried on ARM)."""
    if device.type != "cpu" or not caps.onednn:
        return False
    if dtype is torch.bfloat16:
        return caps.cpu_bf16
    return dtype is torch.float32 and caps.x86


def _decide_device(caps: Capabilities, device: str, setting: str) -> torch.device:
    have = ["cpu"] + (["cuda"] if caps.cuda else []) + (["mps"] if caps.mps else [])
    if device == "auto":
        return torch.device("cuda" if caps.cuda else "mps" if caps.mps else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"{setting}.device must be auto or a torch device ({', '.join(have)}); "
                          f"got {device!r}.") from err
    if dev.type not in have:
        raise ConfigError(f"{setting}.device={device!r} is not available on this machine; "
                          f"choose one of: auto, {', '.join(have)}.")
    return dev


def choose(*, device: str = "auto", dtype: str = "auto", attention: str = "auto",
           setting: str = "backend") -> Choice:
    """:func:`decide` for this machine."""
    return decide(detect(), device=device, dtype=dtype, attention=attention, setting=setting)


def can_pack_linear(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether linear weights of ``dtype`` on ``device`` are packed for oneDNN here
    (models built outside a config: tests, benchmarks)."""
    return _packs(detect(), torch.device(device), dtype)
