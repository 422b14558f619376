"""Defense specs: every documented spec parses, describe() round-trips, malformed specs are ConfigErrors."""

from __future__ import annotations

import pytest

from gradaudit.defenses import (DEFENSES, DPSGD, GaussianNoise, GradientClipping, GradientDropout, GradientPruning,
                                UpdateTransform, parse_defense)
from gradaudit.errors import ConfigError

CASES = {
    "prune:0.9": GradientPruning(0.9, "layer"),
    "prune-global:0.9": GradientPruning(0.9, "global"),
    "clip:4": GradientClipping(4.0),
    "noise:0.01": GaussianNoise(0.01),
    "dropout:0.5": GradientDropout(0.5),
    "dropout-rescaled:0.5": GradientDropout(0.5, rescale=True),
    "dpsgd:1.0,1.1": DPSGD(1.0, 1.1),
    "dpsgd:1.0, 1.1, 1e-6": DPSGD(1.0, 1.1, 1e-6),
    "dpsgd:C=1,sigma=1.1": DPSGD(1.0, 1.1),
}


@pytest.mark.parametrize("spec", list(CASES))
def test_every_spec_parses_and_round_trips(spec):
    t = parse_defense(spec)
    assert t == CASES[spec] and type(t) is type(CASES[spec])
    assert isinstance(t, UpdateTransform)
    assert parse_defense(t.describe()) == t
    assert t.describe().split(":")[0] in DEFENSES


def test_describe_strings():
    assert [parse_defense(s).describe() for s in ("prune:0.9", "prune-global:0.9", "clip:4", "dropout:0.5",
                                                  "dpsgd:1.0,1.1", "noise:0.01")] == \
        ["prune:0.9", "prune-global:0.9", "clip:4", "dropout:0.5", "dpsgd:C=1,sigma=1.1", "noise:0.01"]
    assert parse_defense(GradientClipping(1 / 3).describe()) == GradientClipping(1 / 3)  # no precision lost


@pytest.mark.parametrize("spec,match", [
    ("prune:1.5", "p must be in"), ("clip:-1", "C must be"), ("dpsgd:1", "2 or 3 numbers"),
    ("bogus:1", "unknown defense 'bogus'.*valid: clip, dpsgd"), ("clip", "needs a strength"),
    ("clip:", "needs a strength"), ("clip:four", "not a number"), ("noise:1,2", "1 number"),
    ("dpsgd:1,2,3,4", "2 or 3 numbers"), ("dpsgd:C=1", "lacks 'sigma'"), ("dpsgd:C=1,tau=2", "unknown parameter"),
    ("dpsgd:1,sigma=2", "either all numbers"), ("dropout:1", "p must be in"), ("noise:-0.1", "sigma must be"),
    ("prune-global:-0.5", "p must be in"), ("secagg:1", "num_clients >= 2"), ("secagg:2.5", "integer"),
])
def test_bad_specs_are_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_defense(spec)


def test_names():
    assert {"noise", "prune", "prune-global", "clip", "dropout", "dpsgd"} <= set(DEFENSES)


def test_every_defense_declares_itself():
    """Registration sits on the defense: family, parameters, per-sample or not, what it acts on."""
    from gradaudit.defenses import SecureAggregation
    from gradaudit.defenses.registry import defense_info, defense_strength

    assert set(DEFENSES) == {"prune", "prune-global", "clip", "noise", "dropout", "dropout-rescaled", "dpsgd",
                             "secagg"}
    assert defense_info("dpsgd:1,1.1").per_sample and "batch norm" in defense_info("dpsgd:1,1.1").needs
    assert defense_info("prune:0.9").family == defense_info("prune-global:0.5").family == "pruning"
    assert defense_info("secagg:4").acts_on == "aggregate" and defense_info("noise:0.1").acts_on == "update"
    assert parse_defense("secagg:4") == SecureAggregation(4) and parse_defense("secagg:4").describe() == "secagg:4"
    assert [defense_strength(s) for s in ("prune:0.9", "clip:4", "noise:0.01", "dpsgd:1,1.1", "secagg:3",
                                          "dropout:0.5")] == [0.9, 4.0, 0.01, 1.1, 3.0, 0.5]
