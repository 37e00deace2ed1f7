"""Input checks and launch arithmetic shared by the Triton attention launchers.

Contract: every public launcher calls these before touching a kernel, so a bad shape,
dtype, device or plan raises one ``ValueError`` / ``TypeError`` sentence naming the bad
value and what is allowed (never an ``assert``, never a Triton compile error). The checks
read only shapes, dtypes, devices and the plans' Python fields: no device syncs.
Must NOT know: models, tokens, radix trees, what the engine does with the output.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
# Streaming multiprocessors assumed when the device cannot say (the interpreter on CPU).
DEFAULT_NUM_SMS = 132
LOG2E = 1.4426950408889634


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def interpreter_active() -> bool:
    """True when Triton kernels run on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_NUM_SMS


def check_kernel_device(name: str, t: Tensor) -> None:
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and interpreter_active():
        return
    raise ValueError(f"{name} must be on a CUDA device (or on CPU with TRITON_INTERPRET=1 set "
                     f"before Triton is imported); got device {t.device}.")


def check_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
            or scale <= 0:
        raise ValueError(f"scale must be a positive finite float; got {scale!r}.")
    return float(scale)


def check_tensor(name: str, t: object, *, dim: int, shape_doc: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape_doc}; got {type(t).__name__}.")
    if t.dim() != dim:
        raise ValueError(f"{name} must be {shape_doc}; got shape {tuple(t.shape)}.")
    if t.dtype not in DTYPES:
        raise TypeError(f"{name}.dtype must be float16, bfloat16 or float32; got {t.dtype}.")
    if t.numel() > 0 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last dimension (head_dim); got strides "
                         f"{tuple(t.stride())}.")
    return t


def check_q_and_cache(q: Tensor, k_cache: Tensor, v_cache: Tensor, *, q_doc: str) -> None:
    """Shapes, dtypes and devices of a query block and a paged KV cache pair."""
    check_tensor("q", q, dim=3, shape_doc=q_doc)
    cache_doc = "[num_pages, page_size, num_kv_heads, head_dim]"
    check_tensor("k_cache", k_cache, dim=4, shape_doc=cache_doc)
    check_tensor("v_cache", v_cache, dim=4, shape_doc=cache_doc)
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache and v_cache must have one shape {cache_doc}; got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}.")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise TypeError(f"q, k_cache and v_cache must share a dtype; got {q.dtype}, "
                        f"{k_cache.dtype}, {v_cache.dtype}.")
    if not (q.device == k_cache.device == v_cache.device):
        raise ValueError(f"q, k_cache and v_cache must share a device; got {q.device}, "
                         f"{k_cache.device}, {v_cache.device}.")
    check_kernel_device("q", q)
    head_dim = q.shape[2]
    if head_dim < 1 or head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in 1..{MAX_HEAD_DIM}; got {head_dim}.")
    if k_cache.shape[3] != head_dim:
        raise ValueError(f"q has head_dim {head_dim} but the cache has {k_cache.shape[3]}.")
    num_heads, num_kv_heads = q.shape[1], k_cache.shape[2]
    if num_kv_heads < 1 or num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads ({num_heads}) must be a positive multiple of num_kv_heads "
                         f"({num_kv_heads}).")


def check_index(name: str, t: object, shape: tuple[int, ...], device: torch.device) -> None:
    """An int32 plan tensor of a known shape on the kernel's device."""
    if not isinstance(t, Tensor):
        raise TypeError(f"plan.{name} must be a torch.Tensor; got {type(t).__name__}.")
    if t.dtype != torch.int32:
        raise TypeError(f"plan.{name} must be int32; got {t.dtype}.")
    if tuple(t.shape) != shape:
        raise ValueError(f"plan.{name} must have shape {shape}; got {tuple(t.shape)}.")
    if t.device != device:
        raise ValueError(f"plan.{name} is on {t.device} but q is on {device}; build the plan "
                         f"with device=q.device.")
    if t.numel() > 1 and not t.is_contiguous():
        raise ValueError(f"plan.{name} must be contiguous.")


def check_page_size(plan_page_size: int, k_cache: Tensor) -> None:
    if plan_page_size != k_cache.shape[1]:
        raise ValueError(f"plan was built for page_size {plan_page_size} but the cache has "
                         f"pages of {k_cache.shape[1]} tokens.")
