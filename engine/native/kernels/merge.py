"""Merging partial attention states by log-sum-exp (docs/algorithms.md#shared-prefix-attention).

Contract: a partial state over a key set is ``(o, lse)``: ``o`` normalised over that set and
``lse`` the natural-log sum of ``exp(score)`` over it, float32; an empty set has
``lse = -inf`` (its ``o`` is ignored) and merges as the identity. Two functions:
``merge_states`` merges two states (matches ``ttc.engine.native.attention.merge_states``), and
``reduce_splits`` merges the ``num_splits`` partial states a split-K kernel wrote into a
workspace. Both have a torch reference beside them.
Must NOT know: pages, plans, models, what the keys were.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ttc.engine.native.kernels._common import LOG2E, check_kernel_device, next_pow2

_LOG2E = tl.constexpr(LOG2E)   # kernels work in base 2; the public LSE is natural-log

# -- references ---------------------------------------------------------------------------


def merge_states_reference(o1: Tensor, lse1: Tensor, o2: Tensor,
                           lse2: Tensor) -> tuple[Tensor, Tensor]:
    """Plain-torch merge of two states; see :func:`merge_states`."""
    lse = torch.logaddexp(lse1.float(), lse2.float())
    both_empty = torch.isinf(lse) & (lse < 0)
    safe = torch.where(both_empty, torch.zeros_like(lse), lse)
    w1 = torch.where(both_empty, torch.zeros_like(lse), torch.exp(lse1.float() - safe))
    w2 = torch.where(both_empty, torch.zeros_like(lse), torch.exp(lse2.float() - safe))
    # an empty side has weight 0 and its o (maybe garbage) is dropped, not multiplied
    o = (torch.where(w1.unsqueeze(-1) > 0, o1.float() * w1.unsqueeze(-1), 0.0)
         + torch.where(w2.unsqueeze(-1) > 0, o2.float() * w2.unsqueeze(-1), 0.0))
    return o, lse


def reduce_splits_reference(o_part: Tensor, lse_part: Tensor) -> tuple[Tensor, Tensor]:
    """Plain-torch merge over dim 0: ``[num_splits, rows, heads, head_dim]`` -> ``[rows, ...]``."""
    lse = torch.logsumexp(lse_part.float(), dim=0)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    w = torch.exp(lse_part.float() - safe.unsqueeze(0))              # [num_splits, rows, heads]
    o = (o_part.float() * w.unsqueeze(-1)).sum(dim=0)
    return o, lse


# -- kernels ------------------------------------------------------------------------------


@triton.jit
def _merge_states_kernel(
    o1_ptr, o2_ptr,          # [num_rows, num_heads, head_dim], any float dtype
    lse1_ptr, lse2_ptr,      # [num_rows, num_heads] float32, natural log
    o_ptr,                   # [num_rows, num_heads, head_dim] float32 (out)
    lse_ptr,                 # [num_rows, num_heads] float32 (out)
    stride_o1r, stride_o1h, stride_o2r, stride_o2h,
    stride_l1r, stride_l2r,
    num_heads,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)
    head = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    l1 = tl.load(lse1_ptr + row * stride_l1r + head) * _LOG2E
    l2 = tl.load(lse2_ptr + row * stride_l2r + head) * _LOG2E
    m = tl.maximum(l1, l2)
    m = tl.where(m == float("-inf"), 0.0, m)      # both empty: avoid inf - inf
    a1 = tl.exp2(l1 - m)
    a2 = tl.exp2(l2 - m)
    denom = a1 + a2
    x1 = tl.load(o1_ptr + row * stride_o1r + head * stride_o1h + d, mask=d_ok, other=0.0)
    x2 = tl.load(o2_ptr + row * stride_o2r + head * stride_o2h + d, mask=d_ok, other=0.0)
    # NOTE: an empty side has weight exactly 0, so its (possibly garbage) o never leaks in.
    acc = (tl.where(a1 > 0, x1.to(tl.float32) * a1, 0.0)
           + tl.where(a2 > 0, x2.to(tl.float32) * a2, 0.0))
    acc = acc / tl.where(denom > 0, denom, 1.0)
    base = (row * num_heads + head)
    tl.store(o_ptr + base * HEAD_DIM + d, acc, mask=d_ok)
    lse = tl.where(denom > 0, (m + tl.log2(tl.where(denom > 0, denom, 1.0))) / _LOG2E,
                   float("-inf"))
    tl.store(lse_ptr + base, lse)


@triton.jit
def _reduce_splits_kernel(
    o_part_ptr,              # [num_splits, num_rows, num_heads, head_dim] float32
    lse_part_ptr,            # [num_splits, num_rows, num_heads] float32, natural log
    out_ptr,                 # [num_rows, num_heads, head_dim] (stride given), any float dtype
    lse_ptr,                 # [num_rows, num_heads] float32, written when WRITE_LSE
    num_splits, num_rows, num_heads,
    stride_out_r, stride_out_h,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
    WRITE_LSE: tl.constexpr,
):
    row = tl.program_id(0)
    head = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    s_ok = s < num_splits
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    plane = num_rows * num_heads
    base = row * num_heads + head
    # lse: [BLOCK_S] in log2 units; padding and empty splits are -inf
    lse = tl.load(lse_part_ptr + s * plane + base, mask=s_ok, other=float("-inf")) * _LOG2E
    m = tl.max(lse, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m)                          # [BLOCK_S], 0 for empty splits
    o = tl.load(o_part_ptr + (s[:, None] * plane + base) * HEAD_DIM + d[None, :],
                mask=s_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_S, BLOCK_D]
    o = tl.where(w[:, None] > 0, o * w[:, None], 0.0)
    denom = tl.sum(w, axis=0)
    acc = tl.sum(o, axis=0) / tl.where(denom > 0, denom, 1.0)
    tl.store(out_ptr + row * stride_out_r + head * stride_out_h + d,
             acc.to(out_ptr.dtype.element_ty), mask=d_ok)
    if WRITE_LSE:
        safe = tl.where(denom > 0, denom, 1.0)
        tl.store(lse_ptr + base, tl.where(denom > 0, (m + tl.log2(safe)) / _LOG2E, float("-inf")))


# -- launchers ----------------------------------------------------------------------------


def _check_state(name: str, o: object, lse: object) -> tuple[Tensor, Tensor]:
    if not isinstance(o, Tensor) or not isinstance(lse, Tensor):
        raise TypeError(f"{name} must be a pair of torch.Tensors; got {type(o).__name__} and "
                        f"{type(lse).__name__}.")
    if o.dim() != 3:
        raise ValueError(f"{name}: o must be [num_rows, num_heads, head_dim]; got shape "
                         f"{tuple(o.shape)}.")
    if not o.is_floating_point():
        raise TypeError(f"{name}: o must be a float tensor; got {o.dtype}.")
    if lse.dtype != torch.float32:
        raise TypeError(f"{name}: lse must be float32 (natural log); got {lse.dtype}.")
    if tuple(lse.shape) != tuple(o.shape[:2]):
        raise ValueError(f"{name}: lse must be [num_rows, num_heads] = {tuple(o.shape[:2])}; got "
                         f"{tuple(lse.shape)}.")
    if o.numel() and o.stride(-1) != 1:
        raise ValueError(f"{name}: o must have a contiguous last dimension.")
    if lse.numel() and lse.stride(-1) != 1:
        raise ValueError(f"{name}: lse must have a contiguous last dimension.")
    return o, lse


def merge_states(o1: Tensor, lse1: Tensor, o2: Tensor, lse2: Tensor) -> tuple[Tensor, Tensor]:
    """Merge two partial attention results over disjoint key sets (Triton).

    Parameters
    ----------
    o1, o2 : Tensor
        ``[num_rows, num_heads, head_dim]``, float16/bfloat16/float32, each normalised over
        its own keys.
    lse1, lse2 : Tensor
        ``[num_rows, num_heads]`` float32, natural-log LSE of each key set; ``-inf`` for an
        empty set.

    Returns
    -------
    (o, lse) : ``o`` ``[num_rows, num_heads, head_dim]`` float32 and ``lse``
    ``[num_rows, num_heads]`` float32 (natural log). Merging with ``lse2 = -inf`` returns
    ``o1``; two empty sets give ``o = 0``, ``lse = -inf``.
    """
    _check_state("state 1", o1, lse1)
    _check_state("state 2", o2, lse2)
    if o1.shape != o2.shape:
        raise ValueError(f"the two states must have one shape; got {tuple(o1.shape)} and "
                         f"{tuple(o2.shape)}.")
    if not (o1.device == o2.device == lse1.device == lse2.device):
        raise ValueError(f"all four tensors must share a device; got {o1.device}, {lse1.device}, "
                         f"{o2.device}, {lse2.device}.")
    check_kernel_device("o1", o1)
    num_rows, num_heads, head_dim = o1.shape
    o = torch.empty(o1.shape, dtype=torch.float32, device=o1.device)
    lse = torch.empty(lse1.shape, dtype=torch.float32, device=o1.device)
    if o.numel() == 0 or num_rows == 0 or num_heads == 0:
        return o, lse.fill_(float("-inf"))
    _merge_states_kernel[(num_rows, num_heads)](
        o1, o2, lse1, lse2, o, lse,
        o1.stride(0), o1.stride(1), o2.stride(0), o2.stride(1),
        lse1.stride(0), lse2.stride(0), num_heads,
        HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim))
    return o, lse


def launch_reduce_splits(o_part: Tensor, lse_part: Tensor, out: Tensor,
                         lse_out: Tensor | None) -> None:
    """Merge a split-K workspace into ``out`` (and ``lse_out`` when given); no checks.

    ``o_part``: ``[num_splits, num_rows, num_heads, head_dim]`` float32 contiguous,
    ``lse_part``: ``[num_splits, num_rows, num_heads]`` float32 contiguous, ``out``:
    ``[num_rows, num_heads, head_dim]`` with a contiguous last dimension.
    """
    num_splits, num_rows, num_heads, head_dim = o_part.shape
    if num_rows == 0 or num_heads == 0:
        return
    _reduce_splits_kernel[(num_rows, num_heads)](
        o_part, lse_part, out, lse_out if lse_out is not None else lse_part,
        num_splits, num_rows, num_heads, out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim), BLOCK_S=max(2, next_pow2(num_splits)),
        WRITE_LSE=lse_out is not None)


def reduce_splits(o_part: Tensor, lse_part: Tensor) -> tuple[Tensor, Tensor]:
    """Merge ``num_splits`` partial states (Triton); see :func:`reduce_splits_reference`.

    Parameters
    ----------
    o_part : Tensor
        ``[num_splits, num_rows, num_heads, head_dim]`` float32, contiguous.
    lse_part : Tensor
        ``[num_splits, num_rows, num_heads]`` float32, natural log, contiguous.

    Returns
    -------
    (o, lse) : ``[num_rows, num_heads, head_dim]`` and ``[num_rows, num_heads]``, float32.
    """
    if not isinstance(o_part, Tensor) or not isinstance(lse_part, Tensor):
        raise TypeError("o_part and lse_part must be torch.Tensors.")
    if o_part.dim() != 4 or tuple(lse_part.shape) != tuple(o_part.shape[:3]):
        raise ValueError(f"o_part must be [num_splits, num_rows, num_heads, head_dim] and lse_part "
                         f"its first three dims; got {tuple(o_part.shape)} and "
                         f"{tuple(lse_part.shape)}.")
    if o_part.dtype != torch.float32 or lse_part.dtype != torch.float32:
        raise TypeError(f"o_part and lse_part must be float32; got {o_part.dtype} and "
                        f"{lse_part.dtype}.")
    if not (o_part.is_contiguous() and lse_part.is_contiguous()):
        raise ValueError("o_part and lse_part must be contiguous.")
    if o_part.device != lse_part.device:
        raise ValueError(f"o_part and lse_part must share a device; got {o_part.device} and "
                         f"{lse_part.device}.")
    check_kernel_device("o_part", o_part)
    if o_part.shape[0] == 0:
        raise ValueError("o_part must hold at least one split.")
    out = torch.empty(o_part.shape[1:], dtype=torch.float32, device=o_part.device)
    lse = torch.empty(lse_part.shape[1:], dtype=torch.float32, device=o_part.device)
    launch_reduce_splits(o_part, lse_part, out, lse)
    return out, lse
