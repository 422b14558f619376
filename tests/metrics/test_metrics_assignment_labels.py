"""Optimal alignment of a reconstruction with the truth, and order-free label accuracy."""

from __future__ import annotations

import itertools

import pytest
import torch

from gradaudit.errors import ConfigError
from gradaudit.metrics import label_accuracy, match_to_truth, pairwise_mse, pairwise_ssim, ssim


def total_cost(recon, truth, perm):
    return float(((recon[perm] - truth) ** 2).flatten(1).mean(1).sum())


def greedy(recon, truth):
    """Each truth image in turn takes its nearest still-unused reconstruction."""
    used, perm = set(), []
    cost = pairwise_mse(recon, truth)
    for j in range(truth.shape[0]):
        i = min((i for i in range(recon.shape[0]) if i not in used), key=lambda i: float(cost[i, j]))
        used.add(i)
        perm.append(i)
    return torch.tensor(perm)


@pytest.mark.parametrize("cost", ["mse", "ssim"])
def test_shuffled_batch_is_recovered_exactly(cost):
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(8, 3, 16, 16, generator=g)
    shuffle = torch.randperm(8, generator=g)
    recon = (truth[shuffle] + 0.02 * torch.randn(truth.shape, generator=g)).clamp(0, 1)
    perm = match_to_truth(recon, truth, cost=cost)
    assert perm.dtype == torch.long and perm.shape == (8,)
    assert torch.equal(recon[perm], recon[torch.argsort(shuffle)])
    # recon[perm][j] must be the noisy copy of truth[j]
    assert torch.equal(shuffle[perm], torch.arange(8))


def test_assignment_beats_greedy_on_crafted_case():
    # Constant images. Truth values (0.5, 0.0), reconstructions (0.45, 1.0).
    # Greedy: truth 0.5 grabs 0.45 (cost 0.0025), leaving 1.0 for truth 0.0 (cost 1) -> total 1.0025.
    # Optimal: 0.5 <- 1.0 (0.25) and 0.0 <- 0.45 (0.2025) -> total 0.4525.
    truth = torch.tensor([0.5, 0.0]).view(2, 1, 1, 1).expand(2, 1, 4, 4).contiguous()
    recon = torch.tensor([0.45, 1.0]).view(2, 1, 1, 1).expand(2, 1, 4, 4).contiguous()
    perm = match_to_truth(recon, truth)
    assert perm.tolist() == [1, 0]
    assert greedy(recon, truth).tolist() == [0, 1]
    assert total_cost(recon, truth, perm) == pytest.approx(0.4525)
    assert total_cost(recon, truth, greedy(recon, truth)) == pytest.approx(1.0025)


def test_assignment_is_optimal_against_brute_force():
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        truth = torch.rand(5, 1, 4, 4, generator=g)
        recon = torch.rand(5, 1, 4, 4, generator=g)
        best = min(total_cost(recon, truth, torch.tensor(p)) for p in itertools.permutations(range(5)))
        assert total_cost(recon, truth, match_to_truth(recon, truth)) == pytest.approx(best)


def test_ssim_cost_maximises_total_ssim():
    g = torch.Generator().manual_seed(4)
    truth = torch.rand(5, 1, 12, 12, generator=g)
    recon = torch.rand(5, 1, 12, 12, generator=g)
    matrix = pairwise_ssim(recon, truth)
    for i, j in [(0, 0), (1, 3), (4, 2)]:
        assert float(matrix[i, j]) == pytest.approx(float(ssim(recon[i : i + 1], truth[j : j + 1])[0]), abs=1e-6)
    perm = match_to_truth(recon, truth, cost="ssim")
    best = max(sum(float(matrix[p[j], j]) for j in range(5)) for p in itertools.permutations(range(5)))
    assert sum(float(matrix[perm[j], j]) for j in range(5)) == pytest.approx(best)
    # and it differs from the MSE optimum on this random case, so the cost argument is actually used
    mse_perm = match_to_truth(recon, truth, cost="mse")
    assert float(ssim(recon[perm], truth).sum()) >= float(ssim(recon[mse_perm], truth).sum()) - 1e-9


def test_pairwise_mse_both_code_paths_agree(monkeypatch):
    from gradaudit.metrics import assignment

    a, b = torch.rand(6, 3, 8, 8), torch.rand(5, 3, 8, 8)[[0, 1, 2, 3, 4, 0]]
    expected = torch.stack([((a[i].double() - b.double()) ** 2).flatten(1).mean(1) for i in range(6)])
    torch.testing.assert_close(pairwise_mse(a, b), expected)
    monkeypatch.setattr(assignment, "_DIRECT_MSE_ENTRIES", 0)  # force the |a|^2 + |b|^2 - 2ab path
    torch.testing.assert_close(pairwise_mse(a, b), expected, atol=1e-12, rtol=1e-10)
    assert float(pairwise_mse(a, a).diagonal().abs().max()) < 1e-12


def test_match_to_truth_rejects_bad_input():
    with pytest.raises(ConfigError, match="unknown assignment cost 'lpips'"):
        match_to_truth(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), cost="lpips")
    with pytest.raises(ConfigError, match=r"\(3, 1, 4, 4\).*\(2, 1, 4, 4\)"):
        match_to_truth(torch.rand(3, 1, 4, 4), torch.rand(2, 1, 4, 4))
    with pytest.raises(ConfigError, match="NaN"):
        match_to_truth(torch.full((2, 1, 4, 4), float("nan")), torch.rand(2, 1, 4, 4))


def test_label_accuracy_is_order_free_multiset():
    assert label_accuracy([3, 1, 2], [1, 2, 3]) == 1.0
    assert label_accuracy(torch.tensor([3, 3, 1]), torch.tensor([1, 3, 2])) == pytest.approx(2 / 3)
    assert label_accuracy([0, 0, 0, 0], [0, 0, 1, 1]) == 0.5  # duplicates count once per true occurrence
    assert label_accuracy([5, 6], [1, 2]) == 0.0
    # position-wise accuracy would be 0 here
    assert label_accuracy([1, 2, 3, 4], [4, 3, 2, 1]) == 1.0


def test_label_accuracy_rejects_bad_input():
    with pytest.raises(ConfigError):
        label_accuracy([1, 2], [1, 2, 3])
    with pytest.raises(ConfigError):
        label_accuracy([], [])
    with pytest.raises(ConfigError):
        label_accuracy(torch.tensor([[1, 2]]), torch.tensor([[1, 2]]))
