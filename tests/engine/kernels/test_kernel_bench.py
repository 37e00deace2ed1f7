"""The attention benchmark: its cases and byte counts on CPU; a clear error without a GPU."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from ttc.cli import app
from ttc.engine.native.attention import decode_attention
from ttc.engine.native.kernels import bench
from ttc.registry import ConfigError


def test_shared_and_per_branch_plans_attend_to_the_same_keys():
    case = bench.build_case(3, 32, 20, device="cpu", dtype=torch.float32, num_heads=4,
                            num_kv_heads=2, head_dim=16, page_size=16)
    assert case.shared_plan.num_groups == 1 and case.per_branch_plan.num_groups == 3
    assert case.per_branch_plan.suffix_lens.tolist() == [52, 52, 52]
    # branch 1's own pages follow the two prefix pages and branch 0's two suffix pages
    assert case.suffix_pages[1] == [4, 5]
    a = decode_attention(case.q, case.k_cache, case.v_cache, case.shared_plan, scale=0.25,
                         impl="torch")
    b = decode_attention(case.q, case.k_cache, case.v_cache, case.per_branch_plan, scale=0.25,
                         impl="torch")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bytes_must_read_counts_each_distinct_token_once():
    # (4096 + 64 * 256) tokens x 8 KV heads x 64 dims x K and V x 2 bytes, + q and out
    assert bench.bytes_must_read(64, 4096, 256) == 20480 * 8 * 64 * 2 * 2 + 2 * 64 * 32 * 64 * 2
    assert bench.TARGET in bench.QUICK_GRID and bench.TARGET in bench.FULL_GRID
    assert len(bench.FULL_GRID) == 18


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_without_cuda_the_bench_says_it_needs_a_gpu():
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        bench.run(quick=True)
    result = CliRunner().invoke(app, ["bench", "attention", "--quick", "--json", "out.json"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0], result.output
    assert "Traceback" not in result.output
