"""Run configuration: defaults, YAML + dotted overrides, strict keys with suggestions, value checks."""

from __future__ import annotations

import pytest
import yaml

from gradaudit.config import RunConfig, apply_overrides, load_config, parse_config
from gradaudit.errors import ConfigError


def _write(tmp_path, text: str):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_defaults_validate():
    cfg = load_config()
    assert cfg == RunConfig()
    assert cfg.data.name == "embedded" and cfg.model.name == "lenet"
    assert cfg.threat.batch_size == 1 and cfg.threat.protocol == "fedsgd"
    assert cfg.threat.labels_known is False and cfg.threat.bn_statistics_known is False
    assert cfg.attack.preset == "inverting-gradients"
    assert cfg.attack.overrides() == {}  # no override: the preset's own values are kept
    assert cfg.defenses == [] and cfg.seed == 0 and cfg.device == "cpu"


def test_yaml_file_and_dotted_overrides(tmp_path):
    path = _write(tmp_path, """
data:
  name: cifar10
  indices: [1, 2]
model:
  name: convnet
  kwargs: {width: 16}
threat:
  batch_size: 2
attack:
  preset: dlg
  iterations: 100
seed: 4
""")
    cfg = load_config(path, ["attack.iterations=7", "attack.lr=0.25", "threat.local_lr=1e-3",
                             "data.indices=[3, 5]", "threat.labels_known=true", "attack.vectorize=false",
                             "defenses=[noise:0.01, noise:0.1]", "model.kwargs.norm=none",
                             "attack.regularizers={tv: 0.5}"])
    assert cfg.data.name == "cifar10"  # from the file
    assert cfg.seed == 4
    assert cfg.attack.preset == "dlg"
    assert cfg.attack.iterations == 7 and isinstance(cfg.attack.iterations, int)  # override beats the file
    assert cfg.attack.lr == 0.25 and isinstance(cfg.attack.lr, float)
    assert cfg.threat.local_lr == pytest.approx(1e-3)
    assert cfg.data.indices == [3, 5]
    assert cfg.threat.labels_known is True
    assert cfg.attack.vectorize is False
    assert cfg.defenses == ["noise:0.01", "noise:0.1"]
    assert cfg.model.kwargs == {"width": 16, "norm": "none"}
    assert cfg.attack.regularizers == {"tv": 0.5}
    assert cfg.attack.overrides() == {"iterations": 7, "lr": 0.25, "regularizers": {"tv": 0.5},
                                      "vectorize": False}


def test_override_into_missing_section_and_empty_value():
    cfg = load_config(None, ["threat.batch_size=3", "data.root="])
    assert cfg.threat.batch_size == 3 and cfg.data.root is None


def test_override_through_a_non_section_is_rejected():
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_unknown_key_in_yaml_rejected_with_suggestion(tmp_path):
    path = _write(tmp_path, "attack:\n  iteratons: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "unknown config key 'attack.iteratons'" in str(info.value)
    assert "did you mean 'attack.iterations'" in str(info.value)


def test_unknown_key_in_override_rejected_with_suggestion():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["attack.iteratons=5"])
    assert "unknown config key 'attack.iteratons'" in str(info.value)
    assert "did you mean 'attack.iterations'" in str(info.value)
    with pytest.raises(ConfigError, match="did you mean 'threat.batch_size'"):
        load_config(None, ["threat.batchsize=5"])
    with pytest.raises(ConfigError, match="did you mean 'seed'"):
        load_config(None, ["seeds=5"])


def test_unknown_key_without_close_match_has_no_suggestion():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["zzzqqq=1"])
    assert "unknown config key 'zzzqqq'" in str(info.value)
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize("override, key", [
    ("attack.iterations=-1", "attack.iterations"),
    ("threat.batch_size=0", "threat.batch_size"),
    ("attack.lr=0", "attack.lr"),
    ("attack.lr=-0.1", "attack.lr"),
    ("threat.local_lr=0", "threat.local_lr"),
    ("threat.local_steps=0", "threat.local_steps"),
    ("attack.restarts=0", "attack.restarts"),
    ("threat.protocol=fedprox", "threat.protocol"),
    ("threat.batch_size=two", "threat.batch_size"),
    ("data.image_size=2", "data.image_size"),
])
def test_bad_values_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"invalid config value for '{key}'"):
        load_config(None, [override])


def test_zero_iterations_is_allowed():
    assert load_config(None, ["attack.iterations=0"]).attack.iterations == 0


@pytest.mark.parametrize("device", ["gpu", "tpu", "CPU", "", "mps"])
def test_bad_device_rejected(device):
    with pytest.raises(ConfigError, match="device"):
        parse_config({"device": device})


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1"])
def test_good_devices_accepted(device):
    assert parse_config({"device": device}).device == device


@pytest.mark.parametrize("device", ["cudax", "cuda:abc"])
def test_malformed_cuda_device_rejected(device):
    with pytest.raises(ConfigError, match="device"):
        parse_config({"device": device})


@pytest.mark.parametrize("item", ["foo", "=3", ""])
def test_malformed_override_rejected(item):
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, [item])


def test_unparseable_override_value_rejected():
    with pytest.raises(ConfigError, match="cannot parse value"):
        load_config(None, ["data.indices=[1, 2"])


def test_missing_or_bad_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(_write(tmp_path, "- 1\n- 2\n"))


def test_empty_config_file_gives_defaults(tmp_path):
    assert load_config(_write(tmp_path, "")) == RunConfig()


def test_to_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["data.name=cifar100", "data.indices=[0, 3]", "threat.batch_size=2",
                             "threat.protocol=fedavg", "threat.local_steps=3", "threat.local_lr=0.5",
                             "threat.bn_statistics_known=true", "attack.preset=gradinversion",
                             "attack.iterations=11", "attack.regularizers={tv: 0.1, bn: 0.01}",
                             "model.name=resnet18", "model.kwargs={width: 8}", "defenses=[noise:0.001]",
                             "seed=9", "device=cuda:0"])
    text = cfg.to_yaml()
    assert isinstance(yaml.safe_load(text), dict)  # plain YAML, no python tags
    back = load_config(_write(tmp_path, text))
    assert back == cfg
    assert back.model_dump() == cfg.model_dump()
    assert back.attack.regularizers == {"tv": 0.1, "bn": 0.01}
    assert back.device == "cuda:0"
    # and the defaults round-trip too
    assert load_config(_write(tmp_path, RunConfig().to_yaml())) == RunConfig()


def test_attack_params_reach_any_attack_and_unknown_ones_are_refused():
    from gradaudit.attacks.registry import build_attack
    from gradaudit.config import AttackConfig
    from gradaudit.errors import ConfigError

    cfg = AttackConfig(preset="cpa", params={"decor": 0.5, "iterations": 7})
    attack = build_attack(cfg.preset, **cfg.overrides())
    assert attack.decor == 0.5 and attack.iterations == 7
    assert build_attack("dlg", **AttackConfig(preset="dlg", params={"lr": 0.5}).overrides()).config.lr == 0.5
    with pytest.raises(ConfigError, match="no hyper-parameter 'bogus'"):  # the attack itself checks too
        build_attack("dlg", bogus=1)
    # ... and a config refuses it while parsing, before any work, by the attack's own schema
    for attack, message in (({"preset": "dlg", "params": {"bogus": 1}}, "unknown config key 'attack.bogus'"),
                            ({"preset": "cpa", "decr": 1}, "did you mean 'attack.decor'"),
                            ({"preset": "dlg", "iterations": 3, "params": {"iterations": 4}}, "given twice"),
                            ({"preset": "cpa", "iterations": "many"}, "invalid config value for 'attack.iterations'"),
                            ({"preset": "dlg", "lr": -1}, "invalid config value for 'attack.lr'"),
                            ({"preset": "dlgg"}, "unknown attack 'dlgg'")):
        with pytest.raises(ConfigError, match=message):
            parse_config({"attack": attack})
    flat = parse_config({"attack": {"preset": "dlg", "params": {"lr": 1}}}).attack
    assert flat.overrides() == {"lr": 1.0} and flat.model_dump() == {"preset": "dlg", "lr": 1.0}
