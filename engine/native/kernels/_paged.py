"""The online-softmax loop over one paged key range, shared by the decode and extend kernels.

Contract: :func:`attend_pages` folds keys ``start .. end-1`` of one paged sequence (page
ids at ``page_row``, ``page_size`` tokens a page, one KV head ``kvh``) into a running
attention state ``(m, l, acc)`` of a query tile ``q [M, BLOCK_D]`` (with ``CAUSAL``, row
``i`` sees only keys at positions ``<= qpos[i]``; ``qpos`` is unused otherwise), base-2 as
the kernels keep it: ``m`` the running max of ``score * scale * log2(e)``, ``l`` the sum
of ``exp2(score - m)``, ``acc`` the unnormalised output. Keys are read ``BLOCK_N`` at a
time, once per tile, whatever ``M`` is: the prefix kernel passes a group's whole query tile
(the matrix-matrix product), the suffix kernel one branch's query heads, the extend
kernel a tile of new tokens against their cached prefix and each other.
Must NOT know: plans, groups, branches, models.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ttc.engine.native.kernels._tl import mma


@triton.jit
def attend_pages(q, m_i, l_i, acc, page_row, start, end, k_ptr, v_ptr,
                 stride_kp, stride_ks, stride_kh, stride_vp, stride_vs, stride_vh,
                 kvh, d, d_ok, page_size, scale_log2, qpos,
                 BLOCK_N: tl.constexpr, DOT: tl.constexpr, CAUSAL: tl.constexpr):
    for n0 in range(start, end, BLOCK_N):
        t = n0 + tl.arange(0, BLOCK_N)
        t_ok = t < end
        page = tl.load(page_row + t // page_size, mask=t_ok, other=0).to(tl.int64)
        slot = t % page_size
        # kt: [BLOCK_D, BLOCK_N] (keys transposed), v: [BLOCK_N, BLOCK_D]
        kt = tl.load(k_ptr + page[None, :] * stride_kp + slot[None, :] * stride_ks
                     + kvh * stride_kh + d[:, None],
                     mask=t_ok[None, :] & d_ok[:, None], other=0.0)
        s = mma(q, kt, DOT)
        if CAUSAL:      # extend: a row sees keys up to its own position
            visible = t_ok[None, :] & (t[None, :] <= qpos[:, None])
        else:
            visible = t_ok[None, :]
        s = tl.where(visible, s * scale_log2, float("-inf"))          # [M, BLOCK_N]
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + page[:, None] * stride_vp + slot[:, None] * stride_vs
                    + kvh * stride_vh + d[None, :],
                    mask=t_ok[:, None] & d_ok[None, :], other=0.0)
        pv = mma(p.to(v.dtype), v, DOT)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    return m_i, l_i, acc
