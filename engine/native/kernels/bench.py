"""Attention-kernel benchmark (GPU only): prefix-shared decode against its baselines.

Contract: ``run(quick=...)`` times one decode-attention layer of a tree-search step: ``B``
branches sharing a ``P``-token prefix, each with its own ``S``-token suffix, heads as in
Llama-3.2-1B (32 query heads, 8 KV heads, head dim 64), bfloat16, pages of 16 tokens.
Contenders, all in the same run on the same cache:

* ``shared``: ``ttc.engine.native.kernels.decode_attention`` (prefix read once per group);
* ``per_branch``: the same Triton suffix kernel with every branch reading the whole prefix
  through its own page table (paged decode as vLLM / FlashDecoding do it);
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` on a dense per-branch
  copy of the KV (copy made before timing);
* ``flashinfer``: FlashInfer's two-level cascade attention, when ``flashinfer`` imports.

Each contender is captured in a CUDA graph (so Python launch overhead is excluded, as in a
graph-captured decode step) and replayed with the L2 cache flushed before every replay;
the median is reported in microseconds. ``shared_eager_us`` times the plain Python call.
Bytes the kernel must read: ``(P + B*S) * kv_heads * head_dim * 2 (K and V) * 2 bytes``
plus the queries and outputs; achieved bandwidth = bytes / time, against the GPU's peak
(H100 ~3.0 TB/s, H200 ~4.3 TB/s, else a measured device copy).
Full run: B in {8, 64, 256} x P in {1024, 4096, 16384} x S in {64, 256}; quick: the
target point B=64, P=4096, S=256 and B=8, P=1024, S=64. Targets at B=64, P=4096, S=256:
>= 5x over per_branch, >= 0.9x FlashInfer, >= 70% of peak bandwidth.
Without CUDA it raises a one-sentence ``ConfigError``: its figures need a GPU.
Must NOT know: models, tokens, radix trees, strategies.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable

from ttc.types import BenchReport
from ttc.registry import ConfigError

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, PAGE_SIZE = 32, 8, 64, 16
FULL_GRID = [(b, p, s) for b in (8, 64, 256) for p in (1024, 4096, 16384) for s in (64, 256)]
QUICK_GRID = [(8, 1024, 64), (64, 4096, 256)]
TARGET = (64, 4096, 256)
# Practical peak HBM bandwidth (bytes/s) by device-name fragment.
PEAK_BYTES_PER_S = {"H200": 4.3e12, "H100": 3.0e12}
FLUSH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class BenchCase:
    """One (B, P, S) point: the paged cache, the queries and both plans."""

    q: Any            # [B, NUM_HEADS, HEAD_DIM]
    k_cache: Any      # [num_pages, PAGE_SIZE, NUM_KV_HEADS, HEAD_DIM]
    v_cache: Any
    shared_plan: Any  # one group: the prefix once, each branch its suffix
    per_branch_plan: Any   # B groups without prefix: each branch reads prefix + suffix
    prefix_pages: list[int]
    suffix_pages: list[list[int]]


def build_case(branches: int, prefix: int, suffix: int, *, device: str, dtype=None,
               seed: int = 0, num_heads: int = NUM_HEADS, num_kv_heads: int = NUM_KV_HEADS,
               head_dim: int = HEAD_DIM, page_size: int = PAGE_SIZE) -> BenchCase:
    """A cache with the prefix in pages ``0..`` and each branch's suffix after it."""
    import torch

    from ttc.engine.native.attention import plan_decode

    dtype = dtype or torch.bfloat16
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n_prefix = -(-prefix // page_size)
    n_suffix = -(-suffix // page_size)
    prefix_pages = list(range(n_prefix))
    suffix_pages = [list(range(n_prefix + b * n_suffix, n_prefix + (b + 1) * n_suffix))
                    for b in range(branches)]
    num_pages = n_prefix + branches * n_suffix
    shape = (num_pages, page_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    v_cache = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    q = torch.randn(branches, num_heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    shared = plan_decode(group_sizes=[branches], group_prefix_pages=[prefix_pages],
                         group_prefix_lens=[prefix], suffix_pages=suffix_pages,
                         suffix_lens=[suffix] * branches, page_size=page_size, device=device)
    if prefix % page_size:
        raise ValueError(f"the per-branch baseline needs a prefix that fills whole pages of "
                         f"{page_size}; got {prefix} tokens.")
    per_branch = plan_decode(group_sizes=[1] * branches, group_prefix_pages=[[]] * branches,
                             group_prefix_lens=[0] * branches,
                             suffix_pages=[prefix_pages + own for own in suffix_pages],
                             suffix_lens=[prefix + suffix] * branches, page_size=page_size,
                             device=device)
    return BenchCase(q, k_cache, v_cache, shared, per_branch, prefix_pages, suffix_pages)


def bytes_must_read(branches: int, prefix: int, suffix: int, *, element_bytes: int = 2) -> int:
    """KV read once per distinct token, plus queries read and outputs written."""
    kv = (prefix + branches * suffix) * NUM_KV_HEADS * HEAD_DIM * 2 * element_bytes
    return kv + 2 * branches * NUM_HEADS * HEAD_DIM * element_bytes


# -- timing -------------------------------------------------------------------------------


def _time_us(fn: Callable[[], Any], *, reps: int, graph: bool, label: str = "",
             notes: list[str] | None = None) -> float:
    """Median microseconds of ``fn`` with a flushed L2 before each call.

    With ``graph``, ``fn`` is captured once in a CUDA graph and the graph is replayed; if
    capture fails, ``fn`` is timed as a plain call and a note says so.
    """
    import torch

    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):                 # compile, autotune, warm the allocator
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    call = fn
    if graph:
        g = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g):
                fn()
            call = g.replay
        except RuntimeError as err:
            if notes is not None:
                notes.append(f"{label}: CUDA graph capture failed ({str(err).splitlines()[0]}); "
                             f"timed as plain calls")
            torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
    for start, end in events:
        flush.zero_()
        start.record()
        call()
        end.record()
    torch.cuda.synchronize()
    return 1000.0 * statistics.median(s.elapsed_time(e) for s, e in events)


def _copy_bandwidth() -> float:
    """Bytes/s of a 1 GiB device-to-device copy (read + write), as a measured peak."""
    import torch

    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = _time_us(lambda: dst.copy_(src), reps=10, graph=False)
    return 2 * src.numel() / (us * 1e-6)


def _flashinfer_runner(case: BenchCase, branches: int, prefix: int, suffix: int
                       ) -> Callable[[], Any]:
    """A planned FlashInfer two-level cascade call (ImportError when it is not installed)."""
    import flashinfer  # noqa: PLC0415  (optional baseline)
    import torch

    dev = case.q.device
    i32 = dict(dtype=torch.int32, device=dev)
    n_suffix = len(case.suffix_pages[0])
    workspace = torch.empty(128 * 1024 * 1024, dtype=torch.uint8, device=dev)
    wrapper = flashinfer.MultiLevelCascadeAttentionWrapper(2, workspace, "NHD")
    last_suffix = suffix - (n_suffix - 1) * PAGE_SIZE
    wrapper.plan(
        [torch.tensor([0, branches], **i32), torch.arange(branches + 1, **i32)],
        [torch.tensor([0, len(case.prefix_pages)], **i32),
         torch.arange(branches + 1, **i32) * n_suffix],
        [torch.tensor(case.prefix_pages, **i32),
         torch.tensor([p for own in case.suffix_pages for p in own], **i32)],
        [torch.tensor([prefix - (len(case.prefix_pages) - 1) * PAGE_SIZE], **i32),
         torch.full((branches,), last_suffix, **i32)],
        NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, PAGE_SIZE, sm_scale=HEAD_DIM ** -0.5,
        q_data_type=case.q.dtype, kv_data_type=case.k_cache.dtype)
    return lambda: wrapper.run(case.q, (case.k_cache, case.v_cache))


# -- the benchmark ---------------------------------------------------------------------------


def _point(branches: int, prefix: int, suffix: int, *, reps: int, notes: list[str]
           ) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from ttc.engine.native import kernels as K

    case = build_case(branches, prefix, suffix, device="cuda")
    scale = HEAD_DIM ** -0.5
    launch = K.plan_decode_launch(case.shared_plan, num_heads=NUM_HEADS,
                                  num_kv_heads=NUM_KV_HEADS, device="cuda")
    launch_pb = K.plan_decode_launch(case.per_branch_plan, num_heads=NUM_HEADS,
                                     num_kv_heads=NUM_KV_HEADS, device="cuda")

    def shared():
        return K.decode_attention(case.q, case.k_cache, case.v_cache, case.shared_plan,
                                  scale=scale, launch=launch)

    def per_branch():
        return K.decode_attention(case.q, case.k_cache, case.v_cache, case.per_branch_plan,
                                  scale=scale, launch=launch_pb)

    # Dense per-branch KV for SDPA: [B, kv_heads, P + S, head_dim], built before timing.
    pages = torch.tensor([case.prefix_pages + own for own in case.suffix_pages], device="cuda")
    k_dense = case.k_cache[pages].reshape(branches, -1, NUM_KV_HEADS, HEAD_DIM).transpose(1, 2)
    v_dense = case.v_cache[pages].reshape(branches, -1, NUM_KV_HEADS, HEAD_DIM).transpose(1, 2)
    k_dense, v_dense = k_dense.contiguous(), v_dense.contiguous()
    q4 = case.q.unsqueeze(2)                                    # [B, heads, 1, head_dim]

    def sdpa():
        return F.scaled_dot_product_attention(q4, k_dense, v_dense, scale=scale, enable_gqa=True)

    out_shared = shared().float()
    expect = sdpa()[:, :, 0].float()
    row: dict[str, Any] = {
        "bytes_must_read": bytes_must_read(branches, prefix, suffix),
        "max_abs_diff_shared_vs_sdpa": float((out_shared - expect).abs().max()),
        "max_abs_diff_per_branch_vs_sdpa": float((per_branch().float() - expect).abs().max()),
        "prefix_splits": launch.prefix_splits, "suffix_splits": launch.suffix_splits,
        "shared_us": _time_us(shared, reps=reps, graph=True, label="shared", notes=notes),
        "shared_eager_us": _time_us(shared, reps=reps, graph=False),
        "per_branch_us": _time_us(per_branch, reps=reps, graph=True, label="per_branch",
                                  notes=notes),
        "sdpa_us": _time_us(sdpa, reps=reps, graph=True, label="sdpa", notes=notes),
    }
    del k_dense, v_dense
    try:
        fi = _flashinfer_runner(case, branches, prefix, suffix)
    except ImportError:
        fi = None
    except (RuntimeError, TypeError, ValueError, AttributeError) as err:
        # an optional baseline whose API moved between versions: say so, keep our figures
        notes.append(f"flashinfer cascade failed at B{branches}_P{prefix}_S{suffix}: "
                     f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        fi = None
    if fi is not None:
        row["max_abs_diff_flashinfer_vs_sdpa"] = float((fi().float() - expect).abs().max())
        row["flashinfer_us"] = _time_us(fi, reps=reps, graph=True, label="flashinfer",
                                        notes=notes)
    torch.cuda.empty_cache()
    return row


def run(*, quick: bool) -> BenchReport:
    """Time every grid point; see the module docstring for what is measured."""
    try:
        import torch
    except ImportError as err:
        raise ConfigError("ttc bench attention needs torch with CUDA; torch is not "
                          "installed.") from err
    if not torch.cuda.is_available():
        raise ConfigError("ttc bench attention needs a CUDA GPU and none is available here; "
                          "run it on a GPU machine (its figures cannot come from a CPU).")
    try:
        import triton  # noqa: F401
    except ImportError as err:
        raise ConfigError("ttc bench attention needs triton (pip install 'ttc[triton]').") from err

    gpu = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BYTES_PER_S.items() if k in gpu), None)
    copy_bw = _copy_bandwidth()
    notes: list[str] = [
        "times: median of CUDA-graph replays with L2 flushed before each; shared_eager_us is "
        "the plain Python call (includes launch overhead)",
    ]
    notes.append(f"peak bandwidth: {peak / 1e12:.2f} TB/s nominal for {gpu}" if peak else
                 f"peak bandwidth: {gpu} has no nominal figure here; using the measured copy "
                 f"bandwidth")
    try:
        import flashinfer  # noqa: F401, PLC0415
    except ImportError:
        notes.append("flashinfer is not installed: no cascade baseline in this run")
    reference_peak = peak or copy_bw
    metrics: dict[str, Any] = {"gpu": gpu, "copy_bandwidth_tbps": copy_bw / 1e12,
                               "peak_bandwidth_tbps": reference_peak / 1e12,
                               "num_heads": NUM_HEADS, "num_kv_heads": NUM_KV_HEADS,
                               "head_dim": HEAD_DIM, "page_size": PAGE_SIZE, "dtype": "bfloat16"}
    ratios: dict[str, float] = {}
    reps = 20 if quick else 50
    for b, p, s in (QUICK_GRID if quick else FULL_GRID):
        key = f"B{b}_P{p}_S{s}"
        row = _point(b, p, s, reps=reps, notes=notes)
        tbps = row["bytes_must_read"] / (row["shared_us"] * 1e-6) / 1e12
        row["shared_tbps"] = tbps
        row["shared_fraction_of_peak"] = tbps * 1e12 / reference_peak
        metrics[key] = row
        ratios[f"{key}/per_branch_over_shared"] = row["per_branch_us"] / row["shared_us"]
        ratios[f"{key}/sdpa_over_shared"] = row["sdpa_us"] / row["shared_us"]
        if "flashinfer_us" in row:
            ratios[f"{key}/flashinfer_over_shared"] = row["flashinfer_us"] / row["shared_us"]
    target = metrics[f"B{TARGET[0]}_P{TARGET[1]}_S{TARGET[2]}"]
    met = {"per_branch_5x": target["per_branch_us"] / target["shared_us"] >= 5.0,
           "peak_70pct": target["shared_fraction_of_peak"] >= 0.70}
    if "flashinfer_us" in target:
        met["flashinfer_0.9x"] = target["flashinfer_us"] / target["shared_us"] >= 0.9
    metrics["targets_met_at_B64_P4096_S256"] = met
    return BenchReport(name="attention", metrics=metrics, ratios=ratios, notes=notes)
