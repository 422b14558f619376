"""Did the attack fit the update? The reconstruction's cosine distance against the private batch's, and what the
audit's verdict makes of an attack that under-fit."""

from __future__ import annotations

import pytest
import torch

from gradaudit.attacks import build_attack
from gradaudit.defenses.registry import parse_defense
from gradaudit.evaluation.deployment.config import parse_deployment
from gradaudit.evaluation.deployment.verdict import build_verdict
from gradaudit.errors import ConfigError
from gradaudit.evaluation.fit import (FIT_SHARE, INTACT, NOISY_COPY_SIGMA, UpdateFit, against_flat_image, flat_image,
                                      noisy_copy, update_distance, update_fit)
from gradaudit.metrics import psnr
from gradaudit.evaluation.records import summarize
from gradaudit.evaluation.store import CellRow, UtilityRow
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, ServerKnowledge
from gradaudit.threat.aggregation import aggregate

pytestmark = pytest.mark.usefixtures("single_thread")
DATA = DataSpec("t", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
SPEC = ModelSpec("lenet", 10, (3, 16, 16))


def _share(x, y, transforms=(), protocol="fedsgd", seed=0):
    torch.manual_seed(0)
    model = build_model(SPEC)
    extra = dict(local_steps=2, local_lr=0.05) if protocol == "fedavg" else {}
    client = Client(model, SPEC, DATA, transforms=list(transforms), knowledge=ServerKnowledge(labels=True),
                    protocol=protocol, seed=seed, **extra)
    return client.share(x, y)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 16, 16, generator=g), 3, 1, 1)
    return x, torch.tensor([4, 7])


def test_the_private_batch_fits_and_a_random_guess_is_under_fit(batch):
    x, y = batch
    obs = _share(x, y)
    truth = update_fit(obs, x, y, x, y)
    assert truth.truth == pytest.approx(0.0, abs=1e-5) and truth.closed == pytest.approx(1.0, abs=1e-4)
    assert not truth.underfit and "closed 100%" in truth.describe()
    guess = update_fit(obs, torch.rand_like(x), y, x, y)
    assert guess.closed < FIT_SHARE and guess.underfit and "lower bound" in guess.describe()
    wrong_labels = update_fit(obs, x, torch.tensor([0, 1]), x, y)  # the right images with the wrong labels
    assert wrong_labels.underfit


def test_the_update_distance_over_a_subset_of_tensors(batch):
    x, y = batch
    obs = _share(x, y)
    every = update_distance(obs)
    below = update_distance(obs, exclude=("fc.weight", "fc.bias"))  # LeNet's classifier
    assert every(x, y) == pytest.approx(0.0, abs=1e-5) and below(x, y) == pytest.approx(0.0, abs=1e-5)
    z = torch.rand_like(x)
    assert every(z, y) == pytest.approx(update_fit(obs, z, y).reconstruction, abs=1e-6)  # the fit's own distance
    wrong = torch.tensor([0, 1])  # the right images with wrong labels: the classifier's gradient no longer fits
    assert every(x, wrong) > below(x, wrong) + 0.05
    with pytest.raises(ConfigError, match="'nope' is not a parameter"):
        update_distance(obs, exclude=("nope",))


def test_a_defense_raises_the_truth_s_distance_and_fedavg_is_simulated(batch):
    x, y = batch
    noisy = _share(x, y, [parse_defense("noise:0.05")], seed=3)
    f = update_fit(noisy, x, y, x, y)
    assert f.truth > 0.05 and f.closed == pytest.approx(1.0, abs=1e-4)  # the truth never under-fits itself
    drowned = _share(x, y, [parse_defense("noise:10")], seed=3)  # the update says next to nothing
    f = update_fit(drowned, torch.rand_like(x), y, x, y)
    assert f.closed is None and not f.underfit and "next to nothing" in f.describe()
    local = _share(x, y, protocol="fedavg")
    assert update_fit(local, x, y, x, y).truth == pytest.approx(0.0, abs=1e-4)
    assert update_fit(local, torch.rand_like(x), y, x, y).underfit


def test_without_the_private_batch_the_fit_is_measured_against_a_perfect_one(batch):
    x, y = batch
    obs = _share(x, y)
    exact = update_fit(obs, x, y)  # the attacker rebuilt the batch exactly
    assert not exact.measured and exact.truth == 0.0 and exact.closed == pytest.approx(1.0, abs=1e-4)
    guess = update_fit(obs, torch.rand_like(x), y)
    assert guess.underfit and "perfect fit" in guess.describe() and guess.to_dict()["truth_measured"] is False
    # a defense puts the perfect fit out of reach: then even the private batch reads as under-fit (conservative)
    drowned = _share(x, y, [parse_defense("noise:0.3")], seed=3)
    assert update_fit(drowned, x, y, x, y).closed == pytest.approx(1.0, abs=1e-4)
    assert update_fit(drowned, x, y).closed < 1.0


def test_not_defined_for_aggregates_missing_labels_or_another_batch_size(batch):
    x, y = batch
    obs = _share(x, y)
    assert update_fit(obs, x, None, x, y) is None
    assert update_fit(obs, x[:1], y[:1]) is None  # without the private batch too
    assert update_fit(obs, x[:1], y[:1], x, y) is None
    minibatches = Client(build_model(SPEC), SPEC, DATA, protocol="fedavg", local_lr=0.05, local_epochs=1,
                         local_batch_size=1, knowledge=ServerKnowledge(labels=True)).share(x, y)
    assert update_fit(minibatches, x, y, x, y) is None  # the client's minibatch order is not simulated
    agg = aggregate([obs, _share(x.flip(-1), y)])
    assert update_fit(agg, torch.cat([x, x]), torch.cat([y, y]), torch.cat([x, x]), torch.cat([y, y])) is None


def test_a_short_attack_is_reported_under_fit_and_a_long_one_is_not(batch):
    x, y = batch[0][:1], batch[1][:1]
    obs = _share(x, y)
    short = build_attack("inverting-gradients", tune="off", iterations=2, seed=0).reconstruct(obs)
    long = build_attack("inverting-gradients", tune="off", iterations=300, seed=0).reconstruct(obs)
    f_short = update_fit(obs, short.images, short.labels, x, y)
    f_long = update_fit(obs, long.images, long.labels, x, y)
    assert f_short.underfit and not f_long.underfit
    # the auditor's distance is the attack's own unregularised cosine distance of what it returned
    assert f_long.reconstruction == pytest.approx(long.matching_loss, abs=1e-4)


def test_a_fit_reconstruction_below_the_flat_mean_colour_recovered_nothing_when_the_update_is_intact():
    fit = UpdateFit(0.012, 0.0, 0.466, psnr=10.7, flat_psnr=12.7)  # a trained ResNet-18 at B = 4 (README)
    assert not fit.underfit and fit.recovered_nothing
    assert "recovered nothing" in fit.describe() and "10.70 dB" in fit.describe()
    assert fit.to_dict()["recovered_nothing"] is True and fit.to_dict()["flat_psnr"] == 12.7
    # above the flat image: it rebuilt something
    assert not UpdateFit(0.012, 0.0, 0.466, psnr=13.0, flat_psnr=12.7).recovered_nothing
    # under-fit is reported as such, not twice
    under = UpdateFit(0.72, 0.0, 0.86, psnr=11.0, flat_psnr=11.7)
    assert under.underfit and not under.recovered_nothing
    # a defense that moved the truth away from the update (noise, pruning): a blank image is what it looks like
    defended = UpdateFit(0.15, 0.14, 0.5, psnr=9.0, flat_psnr=12.0)
    assert defended.truth > INTACT * defended.guess and not defended.underfit and not defended.recovered_nothing
    # ... but one that leaves the direction alone (clipping: d_true = 0) is held to the same standard
    assert UpdateFit(0.05, 0.0, 0.5, psnr=9.0, flat_psnr=12.0).recovered_nothing
    # no PSNR (no private batch, or not scored): never
    assert not UpdateFit(0.012, 0.0, 0.466).recovered_nothing


def test_an_update_whose_noisy_copy_of_the_batch_is_as_far_as_a_guess_is_rough():
    rough = UpdateFit(0.72, 0.0, 0.86, copy_distance=0.75)  # a fresh ResNet-18 at B = 1 (README: matching_landscape)
    assert rough.underfit and rough.rough and rough.to_dict()["rough"] is True
    assert "no slope towards the batch" in rough.describe() and "0.750" in rough.describe()
    smooth = UpdateFit(0.72, 0.0, 0.86, copy_distance=0.02)  # the ConvNet: same under-fit, a longer attack may go on
    assert smooth.underfit and not smooth.rough and "no slope" not in smooth.describe()
    assert not UpdateFit(0.72, 0.0, 0.86).rough  # no private batch, no copy
    # under a defense the copy is measured from where the truth sits (d_true 0.4): 0.05 of the span to 0.9
    assert not UpdateFit(0.5, 0.4, 0.9, copy_distance=0.45).rough and UpdateFit(0.8, 0.4, 0.9, copy_distance=0.7).rough
    assert not UpdateFit(0.5, 0.5, 0.51, copy_distance=0.51).rough  # the update says next to nothing anyway


def test_a_fresh_resnet18_at_batch_size_one_is_rough_and_lenet_is_not():
    from gradaudit.data import load_dataset

    ds = load_dataset("embedded")
    x, y = ds.batch([3])
    data = DataSpec(ds.name, ds.mean, ds.std)
    for name, rough in (("resnet18", True), ("lenet", False)):
        spec = ModelSpec(name, ds.num_classes, ds.shape)
        torch.manual_seed(0)
        obs = Client(build_model(spec), spec, data, knowledge=ServerKnowledge(labels=True)).share(x, y)
        fit = update_fit(obs, torch.rand_like(x), y, x, y)
        assert fit.copy_distance is not None and fit.rough is rough, (name, fit)
        # the copy is the private batch with a little noise: far closer in pixels than the guess
        assert float(psnr(noisy_copy(x, obs, NOISY_COPY_SIGMA), x).mean()) > 28


def test_the_flat_image_is_the_data_s_mean_colour_and_is_scored_like_the_reconstruction(batch):
    x, y = batch
    obs = _share(x, y)
    flat = flat_image(obs, x.shape)
    assert flat.shape == x.shape and torch.allclose(flat[1, :, 3, 5], torch.tensor(DATA.mean))
    fit = against_flat_image(update_fit(obs, x, y, x, y), obs, x, 100.0)
    assert fit.flat_psnr == pytest.approx(float(psnr(flat, x).mean()), abs=1e-5) and 5 < fit.flat_psnr < 40
    assert not fit.recovered_nothing  # the batch itself
    # the flat image as the reconstruction: fits this LeNet's update no better than the guess, so under-fit
    blank = against_flat_image(update_fit(obs, flat, y, x, y), obs, x, fit.flat_psnr - 1.0)
    assert blank.underfit and not blank.recovered_nothing
    assert against_flat_image(None, obs, x, 10.0) is None


def test_summary_counts_the_under_fit_runs():
    class R:  # the fields summarize reads
        def __init__(self, fit):
            self.fit, self.scores, self.defenses = fit, None, []
            self.reconstruction = type("Rec", (), {"attack": "ig", "seconds": 1.0})()
            self.observation = type("Obs", (), {"batch_size": 1})()

    rows = summarize("x", [R(UpdateFit(0.7, 0.0, 0.8)), R(UpdateFit(0.01, 0.0, 0.8)), R(None),
                           R(UpdateFit(0.01, 0.0, 0.8, psnr=9.0, flat_psnr=11.0))])
    assert rows["underfit"] == 1 and rows["recovered_nothing"] == 1 and rows["runs"] == 4


# ---------------------------------------------------------------------------------------------- the verdict
def _cell(defense, index, attack, psnr, fit=None):
    metrics = {"scores": {"psnr": [psnr, 5.0], "ssim": [0.1, 0.0], "assignment": [0, 1]}}
    if fit is not None:
        metrics["fit"] = UpdateFit(*fit[:3], **dict(zip(("psnr", "flat_psnr", "copy_distance"), fit[3:]))).to_dict()
    return CellRow(key=f"{defense}/{index}/{attack}", status="done", attack=attack, defense=defense, batch_size=2,
                   sample=0, seed=0, config={"data": {"indices": [index, 99]}}, psnr=psnr, ssim=0.1, metrics=metrics)


def _utility(defense, loss):
    return UtilityRow(key=defense, defense=defense, dataset="embedded", model="lenet", final_train_loss=loss,
                      test_accuracy=0.5, seconds=1.0, config={})


def _deployment():
    return parse_deployment({"name": "t", "model": {"name": "lenet"}, "data": {"name": "embedded", "image_size": 16},
                             "clients": {"protocol": "fedsgd", "samples": 2},
                             "audit": {"rank": 4, "at_risk": 1, "typical": 1, "iterations": 4},
                             "defenses": [["prune:0.9"]], "workers": 1})


def test_a_sample_below_the_threshold_only_because_every_attack_under_fit_is_inconclusive():
    dep = _deployment()
    util = [_utility("none", 0.5), _utility("prune", 0.55)]
    cells = [_cell("none", 1, "ig", 12.0, (0.72, 0.0, 0.86)), _cell("none", 1, "dlg", 11.0, (0.8, 0.0, 0.86)),
             _cell("none", 2, "ig", 11.0, (0.72, 0.0, 0.86)), _cell("none", 2, "dlg", 10.0, (0.02, 0.0, 0.86)),
             _cell("prune:0.9", 1, "ig", 10.0, (0.5, 0.45, 0.9)), _cell("prune:0.9", 2, "ig", 9.0, (0.4, 0.38, 0.9))]
    v = build_verdict(dep, [1, 2], {}, cells, [], util)
    base, pruned = v.defenses
    # sample 1: both attacks under-fit; sample 2: DLG fit (0.02) and still did not rebuild it
    assert [s.underfit for s in base.samples] == [True, False] and base.inconclusive == 1
    assert base.samples[0].fit["reconstruction"] == pytest.approx(0.72)  # the best fit of the two attacks
    assert "1 of 2 inconclusive" in v.headline() and "0.72" in v.headline() and "16% of the way" in v.headline()
    assert "inconclusive" in v.reasons[base.label] and base.row()["inconclusive"] == 1
    # pruning: the attacks closed most of the way the pruned update allows (89%, 96%), so it is recommended
    assert pruned.inconclusive == 0 and v.recommendation is pruned
    # without fit records (older stores) nothing is inconclusive and the no-defense run is recommended
    bare = [_cell(c.defense, c.config["data"]["indices"][0], c.attack, c.psnr) for c in cells]
    assert build_verdict(dep, [1, 2], {}, bare, [], util).recommendation.label == base.label


def test_the_verdict_says_when_more_matching_will_not_settle_an_under_fit_sample():
    dep = _deployment()
    util = [_utility("none", 0.5), _utility("prune", 0.55)]
    cells = [_cell("none", 1, "ig", 11.0, (0.72, 0.0, 0.86, 11.0, 11.7, 0.75)),  # rough: a fresh ResNet-18
             _cell("none", 2, "ig", 11.0, (0.50, 0.0, 0.60, 11.0, 11.7, 0.02)),  # smooth, stopped short
             _cell("prune:0.9", 1, "ig", 9.0, (0.5, 0.45, 0.9)), _cell("prune:0.9", 2, "ig", 9.0, (0.4, 0.38, 0.9))]
    v = build_verdict(dep, [1, 2], {}, cells, [], util)
    base = v.defenses[0]
    assert base.inconclusive == 2 and "2 of 2 inconclusive" in v.headline()
    assert "On 1 of them the update has no slope towards the batch" in v.headline()
    smooth_only = [c for c in cells if c.key != "none/1/ig"]
    assert "no slope" not in build_verdict(dep, [1, 2], {}, smooth_only, [], util).headline()


def test_a_sample_whose_attacks_fit_and_recovered_nothing_is_inconclusive_but_not_under_a_defense_that_works():
    dep = _deployment()
    util = [_utility("none", 0.5), _utility("prune", 0.55)]
    blank, under = (0.012, 0.0, 0.466, 10.7, 12.7), (0.40, 0.0, 0.466, 10.0, 12.7)
    rebuilt = (0.01, 0.0, 0.466, 14.0, 12.7)
    cells = [_cell("none", 1, "ig", 10.7, blank), _cell("none", 1, "dlg", 10.0, under),  # sample 1: nothing found
             _cell("none", 2, "ig", 14.0, rebuilt), _cell("none", 2, "dlg", 10.0, blank),  # sample 2: IG found it
             # pruning moved the truth away from the update (d_true 0.38 of the guess's 0.9): a working defense
             _cell("prune:0.9", 1, "ig", 9.0, (0.4, 0.38, 0.9, 9.0, 12.7)),
             _cell("prune:0.9", 2, "ig", 9.0, (0.4, 0.38, 0.9, 9.0, 12.7))]
    v = build_verdict(dep, [1, 2], {}, cells, [], util)
    base, pruned = v.defenses
    assert [s.recovered_nothing for s in base.samples] == [True, False] and not base.samples[0].underfit
    assert base.inconclusive == 1 and "recovered nothing" in v.headline() and "10.7 dB" in v.headline()
    assert "recovered nothing" in v.reasons[base.label]
    assert pruned.inconclusive == 0 and v.recommendation is pruned  # not "no defense required"
