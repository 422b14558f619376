"""The self-tuning attack: candidates, successive halving, the time budget, best iterates, selection regret."""

from __future__ import annotations

import time

import pytest
import torch

from gradaudit.attacks import build_attack
from gradaudit.attacks.matching.engine import GradientMatchingAttack, MatchingConfig
from gradaudit.attacks.matching.loop import schedule_scale
from gradaudit.attacks.matching.tuning import (BudgetClock, HalvingPlan, candidates_from, consensus_scores,
                                               decisive_leader)
from gradaudit.errors import ConfigError
from gradaudit.evaluation.cell import selection_regret
from gradaudit.metrics import score_reconstruction
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, ServerKnowledge

pytestmark = pytest.mark.usefixtures("single_thread")
DATA = DataSpec("t", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def obs_truth():
    torch.manual_seed(0)
    spec = ModelSpec("lenet", 10, (3, 16, 16))
    model = build_model(spec)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, 16, 16, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # a smooth image: a prior has something to find
    obs = Client(model, spec, DATA, knowledge=ServerKnowledge(labels=True)).share(x, torch.tensor([4]))
    return obs, x


def test_halving_plan_rungs_and_cost():
    plan = HalvingPlan.build(8, 400)
    assert plan.rungs == (25, 50, 100) and plan.keep == (4, 2, 1)
    assert plan.cost(8) == pytest.approx(1.75)
    assert [plan.alive_at(i, 8) for i in (0, 24, 25, 49, 50, 100, 399)] == [8, 8, 4, 4, 2, 1, 1]
    assert HalvingPlan.build(8, 400, eta=1).rungs == ()  # eta = 1: every candidate runs to the end
    assert HalvingPlan.build(1, 400).cost(1) == 1.0
    assert HalvingPlan.build(16, 400).cost(16) == pytest.approx((16 * 12 + 8 * 13 + 4 * 25 + 2 * 50 + 300) / 400)
    assert HalvingPlan.build(2, 400).rungs == (100,) and HalvingPlan.build(2, 400).cost(2) == pytest.approx(1.25)
    # the early look at T/16 exists only before the first rung (K = 2 to 4), never without pruning
    assert HalvingPlan.build(2, 400).look == 25 and HalvingPlan.build(4, 400).look == 25
    assert HalvingPlan.build(8, 400).look == 0 and HalvingPlan.build(2, 400, eta=1).look == 0
    assert HalvingPlan.build(1, 400).look == 0 and HalvingPlan.build(2, 10).look == 0


def test_decisive_leader_needs_a_large_lead_and_under_adaptive_a_fit():
    scores = torch.tensor([0.010, 0.0141, float("inf")])
    assert decisive_leader(scores, [0, 1], "adaptive") == 0  # 1.41x ahead
    assert decisive_leader(torch.tensor([0.010, 0.013]), [0, 1], "adaptive") is None  # 1.3x: the rung decides
    assert decisive_leader(scores, [0, 1, 2], "cosine") == 0 and decisive_leader(scores, [1, 2], "cosine") == 1
    assert decisive_leader(scores, [0], "cosine") is None  # nothing left to decide
    # nothing fits (d >= FIT_FAILED): the adaptive rule wants the strongest prior, whatever the lead
    assert decisive_leader(torch.tensor([0.35, 0.7]), [0, 1], "adaptive") is None
    assert decisive_leader(torch.tensor([0.35, 0.7]), [0, 1], "cosine") == 0


def test_budget_clock_places_rungs_and_milestones_at_the_plan_s_cost_fractions():
    clock = BudgetClock(7.0, 8, 2)
    T = BudgetClock.NOMINAL
    # K = 8 (1.75 T member-iterations): 0.5 T are spent at T/16, 0.75 T at T/8, 1.0 T at T/4
    assert clock.position(2.0) == pytest.approx(T / 16, rel=1e-6)
    assert clock.position(3.0) == pytest.approx(T / 8, rel=1e-6)
    assert clock.position(4.0) == pytest.approx(T / 4, rel=1e-6)
    assert clock.position(7.0) == T and clock.position(99.0) == T and clock.position(0.0) == 0
    # the x0.1 steps at 3T/8, 5T/8, 7T/8 fall at 4.5, 5.5 and 6.5 of the 7 seconds
    assert schedule_scale(clock.position(4.4), T, "multistep") == 1.0
    assert schedule_scale(clock.position(4.6), T, "multistep") == pytest.approx(0.1)
    assert schedule_scale(clock.position(6.6), T, "multistep") == pytest.approx(1e-3)


def test_candidates_from_grid_explicit_and_base():
    grid = candidates_from(0.1, {"tv": 1e-3}, "cosine", "randn", grid={"tv": [1e-2, 0.2], "lr": [0.1, 0.03]})
    assert len(grid) == 4 and {c.weights["tv"] for c in grid} == {1e-2, 0.2}
    explicit = candidates_from(0.1, {"tv": 1e-3}, "cosine", "randn",
                               explicit=[{"distance": "l2"}, {"regularizers": {"tv": 0.5}, "init": "rand"}])
    assert [(c.distance, c.weights["tv"], c.init) for c in explicit] == [("l2", 1e-3, "randn"), ("cosine", 0.5, "rand")]
    assert len(candidates_from(0.1, {}, "cosine", "randn")) == 1
    with pytest.raises(ConfigError, match="non-empty list"):
        candidates_from(0.1, {}, "cosine", "randn", grid={"tv": []})
    with pytest.raises(ConfigError, match="tuning grid key 'bogus'"):
        MatchingConfig(tune="auto", grid={"bogus": [1]})
    with pytest.raises(ConfigError, match="select='heldout' needs"):
        MatchingConfig(select="heldout")
    with pytest.raises(ConfigError, match="unknown tune mode"):
        MatchingConfig(tune="on")


def test_tuned_attack_records_every_candidate_and_returns_the_winner_s_best_iterate(obs_truth):
    obs, truth = obs_truth
    attack = GradientMatchingAttack(tune="auto", grid={"tv": [1e-4, 1e-2, 0.1, 1.0]}, iterations=40,
                                    regularizers={"tv": 1e-3})
    rec = attack.reconstruct(obs)
    tuning = rec.config["tuning"]
    assert tuning["mode"] == "auto" and len(tuning["candidates"]) == 4
    assert [r["iteration"] for r in tuning["rungs"]] == [5, 10]  # 4 -> 2 -> 1 at T/8, T/4
    assert set(rec.candidates) == {0, 1, 2, 3}
    winner = tuning["winner"]
    scores = [c["score"] for c in tuning["candidates"]]
    assert scores[winner] == min(s for s in scores if s is not None)
    # the returned images are the winner's archived best iterate, and its hyper-parameters are recorded
    assert torch.equal(rec.images, rec.candidates[winner][0])
    assert rec.config["regularizers"] == {"tv": tuning["candidates"][winner]["regularizers"]["tv"]}
    regret = selection_regret(rec, truth, score_reconstruction(rec.images, truth).mean_psnr)
    assert regret["regret_db"] >= 0 and len(regret["candidate_psnr"]) == 4
    assert regret["best_candidate_psnr"] == max(regret["candidate_psnr"].values())


def test_a_decisive_leader_keeps_the_budget_alone(obs_truth):
    """K = 2 with a prior far too strong to fit: the early look at T/16 drops it at once (instead of at the T/4
    rung), and the winner is the candidate that fits; with no lead that large, the rung decides as before."""
    torch.manual_seed(0)
    spec = ModelSpec("convnet", 10, (3, 16, 16), {"norm": "none", "width": 8})  # ReLU, no BN: leads are large
    _, truth = obs_truth
    obs = Client(build_model(spec), spec, DATA, knowledge=ServerKnowledge(labels=True)).share(truth, torch.tensor([4]))
    rec = GradientMatchingAttack(tune="auto", grid={"tv": [1e-3, 0.1]}, iterations=64).reconstruct(obs)
    tuning = rec.config["tuning"]
    assert tuning["rungs"] == [{"iteration": 4, "kept": [0], "dropped": [1], "decisive": True}]
    assert tuning["winner"] == 0 and tuning["candidates"][1]["stopped_at"] == 4
    assert tuning["candidates"][1]["score"] >= 1.4 * tuning["candidates"][0]["score"]
    close = GradientMatchingAttack(tune="auto", grid={"tv": [1e-4, 2e-4]}, iterations=64).reconstruct(obs)
    assert [r["iteration"] for r in close.config["tuning"]["rungs"]] == [16]
    assert "decisive" not in close.config["tuning"]["rungs"][0]


def test_tune_off_is_the_fixed_recipe(obs_truth):
    obs, _ = obs_truth
    rec = GradientMatchingAttack(iterations=5, restarts=2).reconstruct(obs)
    assert rec.candidates is None and rec.config["tuning"]["mode"] == "off" and len(rec.restart_losses) == 2
    assert rec.matching_loss == min(rec.restart_losses)


def test_presets_tune_by_default_and_the_reference_recipe_does_not():
    for name in ("inverting-gradients", "gradinversion", "dlg"):
        assert build_attack(name).config.tune == "auto", name
        assert build_attack(name, tune="off").config.tune == "off"
    ref = build_attack("ig-reference").config
    assert (ref.tune, ref.distance, ref.regularizers, ref.lr, ref.signed, ref.schedule, ref.boxed) == \
        ("off", "cosine", {"tv": 0.2}, 0.1, True, "multistep", True)


def test_time_budget_bounds_the_attack_and_completes_its_schedule(obs_truth):
    obs, _ = obs_truth
    for tune in ("wide", "off"):
        t0 = time.perf_counter()
        rec = build_attack("inverting-gradients", tune=tune, time_budget=1.5, iterations=10).reconstruct(obs)
        elapsed = time.perf_counter() - t0
        assert elapsed < 1.5 + 1.0, elapsed  # the budget, plus set-up and one final evaluation
        assert rec.iterations > 10  # the budget, not the iteration count, decides
        assert rec.config["tuning"]["stopped_by_budget"] is True
        if tune == "wide":
            assert len(rec.config["tuning"]["rungs"]) >= 2  # the halving schedule ran


def test_budget_is_validated():
    with pytest.raises(ConfigError, match="time_budget"):
        MatchingConfig(time_budget=0)
    with pytest.raises(ConfigError, match="time_budget"):
        MatchingConfig(time_budget=float("inf"))


def test_consensus_scores():
    x = torch.zeros(3, 1, 1, 2, 2)
    x[2] += 1.0  # the odd one out
    s = consensus_scores(x)
    assert s[2] > s[0] == s[1]
    assert consensus_scores(x[:1]).tolist() == [0.0]


@pytest.mark.parametrize("eta", [1, 2])
def test_vmapped_and_looped_populations_agree(obs_truth, eta):
    obs, _ = obs_truth  # eta 2: 4 members halve to 2 and then 1, so the step leaves vmap for autograd mid-run
    kw = dict(tune="auto", grid={"tv": [1e-3, 1e-2, 0.1, 1.0]}, iterations=16, eta=eta)
    a = GradientMatchingAttack(vectorize=True, **kw).reconstruct(obs)
    b = GradientMatchingAttack(vectorize=False, **kw).reconstruct(obs)
    assert a.config["tuning"]["rungs"] == b.config["tuning"]["rungs"]
    for k in a.candidates:
        torch.testing.assert_close(a.candidates[k][0], b.candidates[k][0], atol=1e-4, rtol=1e-4)


def test_population_step_uses_vmap_only_while_enough_members_are_alive(obs_truth, monkeypatch):
    from gradaudit.attacks.matching import engine

    calls: list[tuple[bool, int]] = []
    real = engine.member_step

    def spy(objective, joint, vectorize):
        inner = real(objective, joint, vectorize)

        def step(theta, const, labels, dist_w, reg_w):
            calls.append((vectorize, labels.shape[0]))
            return inner(theta, const, labels, dist_w, reg_w)
        return step

    monkeypatch.setattr(engine, "member_step", spy)
    obs, _ = obs_truth
    GradientMatchingAttack(tune="auto", grid={"tv": [1e-3, 1e-2, 0.1, 1.0]}, iterations=16).reconstruct(obs)
    sizes = {n for _, n in calls}
    assert {4, 2, 1} <= sizes  # the halving ran: 4 -> 2 -> 1 members
    assert all(vec == (n >= engine.VMAP_MIN_MEMBERS) for vec, n in calls if n > 0)


def test_lbfgs_candidates_are_halved_too(obs_truth):
    obs, _ = obs_truth
    rec = build_attack("dlg", iterations=8, tune="auto", grid={"init": ["randn", "rand"], "lr": [1.0, 0.5]}) \
        .reconstruct(obs)
    tuning = rec.config["tuning"]
    assert len(tuning["candidates"]) == 4 and [len(r["kept"]) for r in tuning["rungs"]] == [2, 1]
    assert all(c["score"] is not None for c in tuning["candidates"])


@pytest.mark.parametrize("model, family, weights", [("lenet", "plain", [1e-3, 0.1]), ("mlp", "plain", [1e-3, 0.1]),
                                                    ("convnet", "batch-norm", [1e-2, 3e-2]),
                                                    ("resnet18", "deep-batch-norm", [0.3, 1.0])])
def test_auto_tuning_runs_the_candidates_of_the_victim_s_family(model, family, weights):
    spec = ModelSpec(model, 10, (3, 16, 16))
    torch.manual_seed(0)
    obs = Client(build_model(spec), spec, DATA, knowledge=ServerKnowledge(labels=True)).share(
        torch.rand(1, 3, 16, 16), torch.tensor([1]))
    setup = build_attack("inverting-gradients").setup(obs)
    assert setup.family == family and [c.weights["tv"] for c in setup.candidates] == weights
    assert len(build_attack("inverting-gradients", tune="wide").setup(obs).candidates) == 8


def test_contrast_is_restored_with_a_few_bn_layers_and_never_in_a_deep_bn_family():
    """A low-contrast copy of the private image fits a BN ConvNet's update as well as the image (first conv + BN
    hide the contrast): the ``batch-norm`` family restores it, the ``deep-batch-norm`` family never does."""
    from dataclasses import replace

    from gradaudit.attacks.matching.loop import Archived, LoopResult

    spec = ModelSpec("convnet", 10, (3, 16, 16))
    torch.manual_seed(0)
    truth = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 16, 16), 3, 1, 1)
    obs = Client(build_model(spec), spec, DATA, knowledge=ServerKnowledge(labels=True)).share(truth, torch.tensor([2]))
    attack = build_attack("inverting-gradients")
    setup = attack.setup(obs)
    assert setup.family == "batch-norm"
    x = (truth - 0.5) / 0.25  # normalised
    mu = x.mean(dim=(0, 2, 3), keepdim=True)
    flat = mu + 0.3 * (x - mu)
    restored = {}
    for family in ("batch-norm", "deep-batch-norm"):
        result = LoopResult(archive={0: Archived(flat.clone(), torch.tensor([2]), 0.25, 10, 10)})
        attack._restore_contrast(replace(setup, family=family), attack._population(setup, setup.candidates), result)
        restored[family] = (result.archive[0].contrast_restored, result.archive[0].x)
    assert restored["batch-norm"][0] and restored["batch-norm"][1].std() > 2 * flat.std()
    assert not restored["deep-batch-norm"][0] and torch.equal(restored["deep-batch-norm"][1], flat)
