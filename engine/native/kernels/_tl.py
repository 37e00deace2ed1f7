"""Small Triton helpers shared by the attention kernels.

Contract: ``mma(a, b, MODE)`` is ``tl.dot`` with an accumulation mode chosen by the
launcher through :func:`dot_mode`: tensor-core default for float16/bfloat16, exact IEEE
float32 for float32 inputs (no TF32 rounding), and, on the CPU interpreter only, bfloat16
operands widened to float32 first, because the interpreter's ``tl.dot`` mishandles
bfloat16 (values already rounded to bfloat16 stay exactly representable, so the result is
what a bfloat16 tensor core with float32 accumulation computes).
Must NOT know: attention, pages, plans.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ttc.engine.native.kernels._common import interpreter_active

DOT_NATIVE = 0
DOT_IEEE = 1
DOT_WIDEN = 2


def dot_mode(dtype: torch.dtype) -> int:
    if dtype == torch.float32:
        return DOT_IEEE
    if dtype == torch.bfloat16 and interpreter_active():
        return DOT_WIDEN
    return DOT_NATIVE


@triton.jit
def mma(a, b, MODE: tl.constexpr):
    if MODE == 2:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif MODE == 1:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out
