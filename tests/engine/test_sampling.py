"""Batched sampling: distribution, truncation, greedy rows, per-row generators."""

from __future__ import annotations

import torch

from ttc.engine.native.sampling import RowParams, sample, seeded_generator, truncate


def test_sampling_follows_the_softmax_of_scaled_logits():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 1e-9]]))
    params = [RowParams(temperature=1.0, top_p=1.0, top_k=0)]
    g = seeded_generator(0, 0)
    counts = torch.zeros(4)
    for _ in range(3000):
        t, lp = sample(logits, params, [g])
        counts[t] += 1
    freq = counts / counts.sum()
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.03)
    assert abs(lp.item() - torch.log_softmax(logits, -1)[0, t].item()) < 1e-5


def test_truncation_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.1, 0.4, 0.3, 0.2]]))
    k2 = truncate(logits, top_k=torch.tensor([2]), top_p=torch.tensor([1.0]))
    assert torch.isinf(k2[0, [0, 3]]).all() and torch.isfinite(k2[0, [1, 2]]).all()
    p = truncate(logits, top_k=torch.tensor([0]), top_p=torch.tensor([0.65]))
    # 0.4 then 0.3 reaches 0.7 >= 0.65: keep two tokens
    assert torch.isfinite(p[0, [1, 2]]).all() and torch.isinf(p[0, [0, 3]]).all()


def test_greedy_rows_and_row_generators_are_independent():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    params = [RowParams(temperature=0.0, top_p=1.0, top_k=0),
              RowParams(temperature=1.0, top_p=0.9, top_k=10),
              RowParams(temperature=1.0, top_p=0.9, top_k=10)]
    a, _ = sample(logits, params, [None, seeded_generator(1, 0), seeded_generator(1, 1)])
    b, _ = sample(logits[1:2], params[1:2], [seeded_generator(1, 0)])
    assert a[0] == logits[0].argmax()
    assert a[1] == b[0]                     # a row's draw does not depend on its batch


def test_two_level_inverse_cdf_matches_one_cumulative_sum():
    """The block-wise search picks the token a full cumulative sum picks (up to float
    rounding at a boundary), for vocabularies that are and are not a multiple of the block,
    and never a zero-probability token."""
    from ttc.engine.native.sampling import BLOCK, _inverse_cdf

    g = torch.Generator().manual_seed(3)
    for vocab in (BLOCK * 3, 1000, 7):
        probs = torch.softmax(torch.randn(6, vocab, generator=g) * 4, dim=-1)
        same = total = 0
        for _ in range(50):
            u = torch.rand(6, generator=g)
            cdf = probs.cumsum(-1)
            full = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
            picks = _inverse_cdf(probs, u)
            assert (picks - full.clamp(max=vocab - 1)).abs().max() <= 1
            same += int((picks == full.clamp(max=vocab - 1)).sum())
            total += 6
        assert same >= 0.99 * total
    one_hot = torch.zeros(3, 1000)
    one_hot[0, 999], one_hot[1, 0], one_hot[2, 517] = 1.0, 1.0, 1.0
    for u in (0.0, 0.5, 0.9999):
        assert _inverse_cdf(one_hot, torch.full((3,), u)).tolist() == [999, 0, 517]
