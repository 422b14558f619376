
import pytest
import torch

from gradaudit.attacks.matching.distances import (STATISTIC_FORMS, cosine_distance, get_distance, l2_distance,
                                                  reweighted_cosine_distance, tensor_statistics)
from gradaudit.attacks.matching.regularizers import total_variation, total_variation_squared
from gradaudit.errors import ConfigError


def test_l2_is_sum_of_squared_differences():
    g = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    t = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
    assert float(l2_distance(g, t)) == pytest.approx(1 + 4 + 4)


def test_cosine_is_global_over_concatenated_layers():
    g = [torch.tensor([1.0, 0.0]), torch.tensor([1.0])]
    t = [torch.tensor([1.0, 0.0]), torch.tensor([-1.0])]
    # concatenated: (1,0,1) . (1,0,-1) = 0 -> distance 1
    assert float(cosine_distance(g, t)) == pytest.approx(1.0)
    assert float(cosine_distance(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(cosine_distance([2 * a for a in t], t)) == pytest.approx(0.0, abs=1e-6)  # scale invariant


def test_reweighted_cosine_equalises_layers():
    # a huge first layer that matches and a small second layer that is opposite
    t = [torch.tensor([100.0]), torch.tensor([0.01])]
    g = [torch.tensor([100.0]), torch.tensor([-0.01])]
    assert float(cosine_distance(g, t)) < 1e-6            # plain cosine ignores the small layer
    assert float(reweighted_cosine_distance(g, t)) == pytest.approx(1.0)  # (1*1 + 1*-1)/2 -> cos 0


@pytest.mark.parametrize("name", ["cosine", "reweighted-cosine"])
def test_statistic_forms_equal_the_distances(name):
    """The objective reads its fitted, monitored and held-out cosines off per-tensor statistics: the same numbers
    and the same gradient as the tensor form, on layers of very different scales."""
    gen = torch.Generator().manual_seed(0)
    t = [torch.randn(5, 3, generator=gen) * 100, torch.randn(7, generator=gen) * 0.01, torch.randn(2, 2, generator=gen)]
    g = [torch.randn(a.shape, generator=gen, requires_grad=True) for a in t]
    scale = [b.norm() if name == "reweighted-cosine" else torch.tensor(1.0) for b in t]
    flat_g = torch.cat([(a / n).flatten() for a, n in zip(g, scale)])
    flat_t = torch.cat([(b / n).flatten() for b, n in zip(t, scale)])
    direct = 1 - torch.nn.functional.cosine_similarity(flat_g, flat_t, dim=0)  # an independent reference
    assert float(get_distance(name)(g, t)) == pytest.approx(float(direct), rel=1e-5)
    dot, sq = tensor_statistics(g, t)
    tsq = torch.stack([(b * b).sum() for b in t])  # written out here, not the module's helper
    via = STATISTIC_FORMS[name](dot, sq, tsq)
    assert float(via) == pytest.approx(float(direct), rel=1e-5)
    for a, b in zip(torch.autograd.grad(direct, g), torch.autograd.grad(via, g)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    assert "l2" not in STATISTIC_FORMS  # l2 near its minimum would cancel catastrophically from statistics


def test_tensor_statistics_are_differentiable_twice_and_vmap_over_a_population():
    """The statistics' fused gradient (d/dg = gdot g* + 2 gsq g) against autograd's, to second order, with respect
    to the target too, and under torch.func's vmap (a tuning population) against one member at a time."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(4, 3, 3, 3), (4,), (10, 4)]
    t = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    g = [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in shapes]

    def cosine(*xs):
        dot, sq = tensor_statistics(xs[:3], xs[3:])
        return STATISTIC_FORMS["cosine"](dot, sq, torch.stack([(b * b).sum() for b in xs[3:]]))

    targets = [b.clone().requires_grad_() for b in t]
    assert torch.autograd.gradcheck(cosine, (*g, *targets))
    assert torch.autograd.gradgradcheck(cosine, (*g, *targets))
    population = [torch.randn((3, *s), generator=gen, dtype=torch.float64) for s in shapes]
    batched = torch.func.vmap(torch.func.grad(lambda *xs: cosine(*xs, *t), argnums=(0, 1, 2)))(*population)
    for k in range(3):
        one = [p[k].clone().requires_grad_() for p in population]
        flat = torch.cat([a.flatten() for a in one])
        direct = 1 - torch.nn.functional.cosine_similarity(flat, torch.cat([b.flatten() for b in t]), dim=0)
        for a, b in zip(batched, torch.autograd.grad(direct, one)):
            assert torch.allclose(a[k], b, rtol=1e-9, atol=1e-12)


def test_tv_values():
    x = torch.zeros(1, 1, 2, 3)
    x[..., :, 1] = 1.0  # columns 0,1,2 = 0,1,0 -> horizontal diffs |1|,|−1| ; vertical 0
    assert float(total_variation(x)) == pytest.approx(1.0)
    assert float(total_variation_squared(x)) == pytest.approx(1.0)
    x2 = 2 * x
    assert float(total_variation(x2)) == pytest.approx(2.0)
    assert float(total_variation_squared(x2)) == pytest.approx(4.0)


def test_unknown_distance_lists_valid_names():
    with pytest.raises(ConfigError, match="cosine.*l2|l2.*cosine"):
        get_distance("l3")
