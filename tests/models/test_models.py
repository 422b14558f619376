"""Victim architectures and the model registry (names, user factories, ModelSpec)."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from gradaudit.errors import ConfigError
from gradaudit.models import MODELS, ConvNet, LeNet, ModelSpec, ResNet18, TwoLayerMLP, build_model

SHAPES = [(3, 32, 32), (1, 28, 28)]
# Small widths keep the expensive checks fast; the architecture (and so in-place ops) is the same.
SMALL = {"lenet": {}, "convnet": {"width": 4}, "resnet18": {"width": 4}, "mlp": {"width": 16},
         "imprint": {"base": "mlp", "bins": 8, "base_kwargs": {"width": 16}},
         "wide-head": {"backbone": "convnet", "width": 16, "backbone_kwargs": {"width": 4}},
         "trap-weights": {"base": "mlp", "neurons": 8, "base_kwargs": {"width": 16}},
         "fishing": {"base": "mlp", "bins": 8, "base_kwargs": {"width": 16}},
         "vit": {"dim": 16, "depth": 1, "heads": 2}}


def test_registry_names_the_victims():
    from gradaudit.models.fishing import FishingModel
    from gradaudit.models.malicious import ImprintedModel, WideFeatureModel
    from gradaudit.models.registry import MALICIOUS_MODELS
    from gradaudit.models.trap import TrapWeightsModel
    from gradaudit.models.vit import VisionTransformer

    assert MODELS == {"lenet": LeNet, "convnet": ConvNet, "resnet18": ResNet18, "mlp": TwoLayerMLP,
                      "imprint": ImprintedModel, "wide-head": WideFeatureModel, "trap-weights": TrapWeightsModel,
                      "fishing": FishingModel, "vit": VisionTransformer}
    assert MALICIOUS_MODELS == {"imprint", "wide-head", "trap-weights", "fishing"}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("classes", [10, 100])
def test_every_model_builds_and_outputs_batch_by_classes(name, shape, classes):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name, classes, shape))
    assert isinstance(model, MODELS[name])
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(3, *shape))
    assert out.shape == (3, classes)
    assert torch.isfinite(out).all()


def test_spec_kwargs_reach_the_constructor():
    model = build_model(ModelSpec("convnet", 10, (3, 32, 32), {"width": 4}))
    assert model.features[0].out_channels == 4
    assert model.fc.in_features == 4 * 4 * 16
    lenet = build_model(ModelSpec("lenet", 7, (1, 28, 28), {"width": 5}))
    assert lenet.body[0].in_channels == 1 and lenet.body[0].out_channels == 5
    assert lenet.fc.out_features == 7


def test_resnet18_has_cifar_stem_and_no_max_pool():
    model = build_model(ModelSpec("resnet18", 10, (3, 32, 32)))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    first = convs[0]
    assert first.kernel_size == (3, 3)
    assert first.stride == (1, 1)
    assert first.in_channels == 3 and first.out_channels == 64
    assert not any(isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d))
                   for m in model.modules())
    # the stem keeps the full 32x32 resolution (a 7x7/2 stem + max-pool would give 8x8)
    model.eval()
    with torch.no_grad():
        assert model.stem(torch.rand(1, 3, 32, 32)).shape == (1, 64, 32, 32)
    # 18 weighted layers: 17 convolutions on the main path (+3 projection shortcuts) and one linear
    assert len([c for c in convs if c.kernel_size == (3, 3)]) == 17
    assert len([c for c in convs if c.kernel_size == (1, 1)]) == 3
    assert isinstance(model.fc, nn.Linear) and model.fc.in_features == 512


def test_resnet18_has_no_inplace_relu():
    model = build_model(ModelSpec("resnet18", 10, (3, 32, 32), {"width": 4}))
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus and not any(r.inplace for r in relus)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_lenet_default_init_is_uniform_half(shape):
    torch.manual_seed(1)
    model = build_model(ModelSpec("lenet", 10, shape))
    params = list(model.parameters())
    assert len(params) == 8  # 3 convs + 1 linear, weight and bias each
    for p in params:
        assert p.min() >= -0.5 and p.max() <= 0.5
    flat = torch.cat([p.detach().flatten() for p in params])
    # PyTorch's default init is ~ 1/sqrt(fan_in) << 0.5; U(-0.5, 0.5) has std 1/sqrt(12) ~ 0.289
    assert flat.abs().max() > 0.45
    assert abs(flat.std().item() - 12 ** -0.5) < 0.02
    # every layer, including the big classifier, is drawn from the same distribution
    assert model.fc.weight.abs().max() > 0.45
    assert model.body[4].bias.abs().max() > 0.2


def test_lenet_default_pytorch_init_is_available_and_different():
    torch.manual_seed(1)
    model = build_model(ModelSpec("lenet", 10, (3, 32, 32), {"init": "default"}))
    assert model.fc.weight.abs().max() < 0.1


def _write_module(tmp_path, monkeypatch, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_user_factory_receives_num_classes_and_input_shape(tmp_path, monkeypatch):
    mod = _write_module(tmp_path, monkeypatch, "ga_user_models_a", """
        from torch import nn
        CALLS = []
        def make(num_classes, input_shape, hidden=3):
            CALLS.append((num_classes, input_shape, hidden))
            c, h, w = input_shape
            return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.Linear(hidden, num_classes))
    """)
    model = build_model(ModelSpec(f"{mod}:make", 5, (1, 28, 28), {"hidden": 7}), trust_code=True)
    import ga_user_models_a

    assert ga_user_models_a.CALLS == [(5, (1, 28, 28), 7)]
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 5)


def test_user_factory_without_num_classes_arg(tmp_path, monkeypatch):
    mod = _write_module(tmp_path, monkeypatch, "ga_user_models_b", """
        from torch import nn
        def fixed():
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))
        def anything(**kwargs):
            global SEEN
            SEEN = dict(kwargs)
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, kwargs["num_classes"]))
    """)
    model = build_model(ModelSpec(f"{mod}:fixed", 10, (3, 32, 32)), trust_code=True)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    model = build_model(ModelSpec(f"{mod}:anything", 6, (3, 32, 32)), trust_code=True)
    import ga_user_models_b

    assert ga_user_models_b.SEEN == {"num_classes": 6, "input_shape": (3, 32, 32)}
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 6)


def test_user_factory_returning_non_module_is_config_error(tmp_path, monkeypatch):
    mod = _write_module(tmp_path, monkeypatch, "ga_user_models_c", """
        def bad(num_classes):
            return "not a model"
        def picky(num_classes):
            return None
        NOT_CALLABLE = 3
    """)
    with pytest.raises(ConfigError, match="str.*nn.Module"):
        build_model(ModelSpec(f"{mod}:bad", 10, (3, 32, 32)), trust_code=True)
    with pytest.raises(ConfigError, match="rejected its arguments"):
        build_model(ModelSpec(f"{mod}:picky", 10, (3, 32, 32), {"unexpected": 1}), trust_code=True)
    with pytest.raises(ConfigError, match="not callable"):
        build_model(ModelSpec(f"{mod}:NOT_CALLABLE", 10, (3, 32, 32)), trust_code=True)
    with pytest.raises(ConfigError, match="no attribute 'missing'"):
        build_model(ModelSpec(f"{mod}:missing", 10, (3, 32, 32)), trust_code=True)
    with pytest.raises(ConfigError, match="cannot import module 'ga_no_such_module_xyz'"):
        build_model(ModelSpec("ga_no_such_module_xyz:f", 10, (3, 32, 32)), trust_code=True)
    with pytest.raises(ConfigError, match="package.module:factory"):
        build_model(ModelSpec(":f", 10, (3, 32, 32)), trust_code=True)


def test_user_factory_is_refused_before_import_unless_trusted(tmp_path, monkeypatch):
    """No code from data: a factory name is never imported (let alone called) without an explicit trust."""
    import sys

    from gradaudit.trust import UntrustedCodeError, trusting_code

    mod = _write_module(tmp_path, monkeypatch, "ga_user_models_trust", """
        import pathlib
        pathlib.Path(__file__).with_name("IMPORTED").write_text("x")
        from torch import nn
        def make(num_classes):
            return nn.Linear(2, num_classes)
    """)
    for spec in (ModelSpec(f"{mod}:make", 3, (1, 1, 2)), ModelSpec("os:system", 3, (1, 1, 2), {"command": "true"})):
        with pytest.raises(UntrustedCodeError, match="--trust-model-code"):
            build_model(spec)
    with pytest.raises(ConfigError, match="base must be one of"):  # the malicious models name registered bases only
        build_model(ModelSpec("imprint", 3, (1, 8, 8), {"base": f"{mod}:make"}))
    assert mod not in sys.modules and not (tmp_path / "IMPORTED").exists()
    assert isinstance(build_model(ModelSpec(f"{mod}:make", 3, (1, 1, 2), trust_code=True)), nn.Module)
    with trusting_code():
        assert isinstance(build_model(ModelSpec(f"{mod}:make", 3, (1, 1, 2))), nn.Module)
    spec = ModelSpec(f"{mod}:make", 3, (1, 1, 2), trust_code=True)
    assert "trust_code" not in spec.to_dict() and not ModelSpec.from_dict(spec.to_dict()).trust_code


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        build_model(ModelSpec("lenett", 10, (3, 32, 32)))
    msg = str(info.value)
    assert "unknown model 'lenett'" in msg
    assert "did you mean 'lenet'" in msg
    for name in MODELS:
        assert name in msg
    assert "package.module:factory" in msg


def test_bad_builtin_kwarg_is_config_error():
    with pytest.raises(ConfigError, match="lenet"):
        build_model(ModelSpec("lenet", 10, (3, 32, 32), {"depth": 3}))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_is_twice_differentiable(name):
    """DLG-style attacks differentiate a gradient norm w.r.t. the input: no in-place op may break this."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(name, 10, (3, 16, 16), SMALL[name]))
    model.train()
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    y = torch.tensor([1, 3])
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    gnorm = sum((g ** 2).sum() for g in grads)
    (dx,) = torch.autograd.grad(gnorm, x)
    assert dx.shape == x.shape
    assert torch.isfinite(dx).all()
    assert dx.abs().sum() > 0

    # and it is the true derivative: in double precision, compare with a central finite difference (a tiny
    # step: these ReLU/BN networks are only piecewise smooth)
    model.double()
    xd = x.detach().double().requires_grad_(True)

    def gn(inp, create_graph=False):
        loss_ = nn.functional.cross_entropy(model(inp), y)
        gs = torch.autograd.grad(loss_, list(model.parameters()), create_graph=create_graph)
        return sum((g ** 2).sum() for g in gs)

    (dxd,) = torch.autograd.grad(gn(xd, create_graph=True), xd)
    v = torch.randn_like(xd)
    eps = 1e-7
    fd = (gn(xd.detach() + eps * v).item() - gn(xd.detach() - eps * v).item()) / (2 * eps)
    assert fd == pytest.approx((dxd * v).sum().item(), rel=1e-4, abs=1e-7)
    assert torch.allclose(dxd.float(), dx, rtol=1e-2, atol=1e-3 * dx.abs().max().item())


def test_model_spec_dict_round_trip():
    spec = ModelSpec("convnet", 100, (1, 28, 28), {"width": 8, "norm": "none"})
    d = spec.to_dict()
    assert d == {"name": "convnet", "num_classes": 100, "input_shape": [1, 28, 28],
                 "kwargs": {"width": 8, "norm": "none"}}
    import json

    back = ModelSpec.from_dict(json.loads(json.dumps(d)))
    assert back == spec
    assert back.input_shape == (1, 28, 28) and isinstance(back.input_shape, tuple)
    # kwargs are optional on the way in
    assert ModelSpec.from_dict({"name": "mlp", "num_classes": 3, "input_shape": [3, 8, 8]}).kwargs == {}


def test_model_spec_from_incomplete_dict_is_config_error():
    with pytest.raises(ConfigError, match="name, num_classes, input_shape"):
        ModelSpec.from_dict({"name": "lenet", "input_shape": [3, 32, 32]})
    with pytest.raises(ConfigError):
        ModelSpec.from_dict({"name": "lenet", "num_classes": "ten", "input_shape": [3, 32, 32]})
