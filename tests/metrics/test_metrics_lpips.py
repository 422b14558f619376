"""LPIPS: unavailable (with a reason) unless the lpips package and all pretrained weights load offline."""

from __future__ import annotations

import sys

import pytest
import torch

from gradaudit.errors import ConfigError
from gradaudit.metrics import LPIPSMetric, LPIPSUnavailableError
from gradaudit.metrics import lpips as lpips_module


def test_default_metric_on_this_machine_is_usable_or_says_why():
    metric = LPIPSMetric()
    x = torch.rand(2, 3, 32, 32)
    if metric.available:  # only where lpips and the AlexNet checkpoint are really installed
        assert metric.reason is None
        d = metric(x, x.flip(0))
        assert d.shape == (2,) and torch.allclose(metric(x, x), torch.zeros(2), atol=1e-6)
    else:
        assert isinstance(metric.reason, str) and metric.reason
        with pytest.raises(LPIPSUnavailableError, match="LPIPS is unavailable"):
            metric(x, x)


def test_unavailable_when_package_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # makes `import lpips` raise ModuleNotFoundError
    metric = LPIPSMetric()
    assert metric.available is False
    assert metric.reason == "lpips package not installed"
    with pytest.raises(LPIPSUnavailableError, match="lpips package not installed"):
        metric(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))


def test_unavailable_when_import_fails(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "lpips"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.delitem(sys.modules, "lpips", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    metric = LPIPSMetric()
    assert not metric.available
    assert metric.reason.startswith("import lpips failed: RuntimeError")
    assert "torchvision::nms" in metric.reason


def test_available_path_loads_every_weight_and_feeds_minus_one_to_one(fake_lpips):
    metric = LPIPSMetric(backbone_weights=fake_lpips.backbone_path)
    assert metric.available and metric.reason is None
    (model,) = fake_lpips.instances
    # lpips asked for its linear weights but not to fetch the backbone (we load it from the local file)
    assert model.kwargs["pretrained"] is True and model.kwargs["pnet_rand"] is True
    assert model.kwargs["model_path"] == str(fake_lpips.lin_path)
    # every parameter now holds the file's values, none is left at random init
    torch.testing.assert_close(model.net.slice1[0].weight, fake_lpips.backbone["features.0.weight"])
    torch.testing.assert_close(model.net.slice1[0].bias, fake_lpips.backbone["features.0.bias"])
    torch.testing.assert_close(model.net.slice2[0].weight, fake_lpips.backbone["features.2.weight"])
    torch.testing.assert_close(model.net.slice2[0].bias, fake_lpips.backbone["features.2.bias"])
    torch.testing.assert_close(model.lin0.model[1].weight, fake_lpips.lin["lin0.model.1.weight"])
    assert not model.training and not any(p.requires_grad for p in model.parameters())

    x = torch.rand(3, 3, 32, 32)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0.0, 1.0
    y = torch.rand(3, 3, 32, 32)
    d = metric(x, y)
    assert d.shape == (3,)
    in0, in1, normalize = model.calls[-1]
    assert normalize is False  # we map to [-1, 1] ourselves
    torch.testing.assert_close(in0, 2 * x - 1)
    torch.testing.assert_close(in1, 2 * y - 1)
    assert in0.min() == -1.0 and in0.max() == 1.0
    assert (d > 0).all()
    torch.testing.assert_close(metric(x, x), torch.zeros(3))


def test_grayscale_and_small_images_are_adapted(fake_lpips):
    metric = LPIPSMetric(backbone_weights=fake_lpips.backbone_path)
    (model,) = fake_lpips.instances
    x = torch.rand(2, 1, 28, 28)
    metric(x, x.flip(0))
    in0, _, _ = model.calls[-1]
    assert in0.shape == (2, 3, 32, 32)  # gray repeated to RGB, 28 px upsampled to AlexNet's 32 minimum
    assert torch.equal(in0[:, 0], in0[:, 1]) and torch.equal(in0[:, 1], in0[:, 2])
    assert in0.min() >= -1.0 and in0.max() <= 1.0
    with pytest.raises(ConfigError, match="channels"):
        metric(torch.rand(1, 2, 32, 32), torch.rand(1, 2, 32, 32))
    with pytest.raises(ConfigError, match="shape"):
        metric(torch.rand(1, 3, 32, 32), torch.rand(2, 3, 32, 32))


def test_backbone_found_in_torch_hub_cache_or_reported_missing(fake_lpips, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    metric = LPIPSMetric()
    assert not metric.available
    assert metric.reason.startswith("pretrained AlexNet weights not found offline")
    assert str(hub / "checkpoints" / "alexnet-owt-7be5be79.pth") in metric.reason
    assert fake_lpips.instances == []  # not even built: no model with random weights exists
    with pytest.raises(LPIPSUnavailableError, match="AlexNet weights not found"):
        metric(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    (hub / "checkpoints").mkdir(parents=True)
    fake_lpips.backbone_path.rename(hub / "checkpoints" / "alexnet-owt-7be5be79.pth")
    assert LPIPSMetric().available


def test_incomplete_or_wrong_weights_make_it_unavailable(fake_lpips, tmp_path):
    partial = {k: v for k, v in fake_lpips.backbone.items() if k != "features.2.weight"}
    torch.save(partial, tmp_path / "partial.pth")
    metric = LPIPSMetric(backbone_weights=tmp_path / "partial.pth")
    assert not metric.available and "lacks 'features.2.weight'" in metric.reason

    wrong = dict(fake_lpips.backbone, **{"features.0.weight": torch.zeros(8, 3, 3, 3)})
    torch.save(wrong, tmp_path / "wrong.pth")
    metric = LPIPSMetric(backbone_weights=tmp_path / "wrong.pth")
    assert not metric.available and "shape" in metric.reason

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert not LPIPSMetric(backbone_weights=tmp_path / "junk.pth").available

    torch.save({}, fake_lpips.lin_path)
    metric = LPIPSMetric(backbone_weights=fake_lpips.backbone_path)
    assert not metric.available and "lin0.model.1.weight" in metric.reason
    fake_lpips.lin_path.unlink()
    metric = LPIPSMetric(backbone_weights=fake_lpips.backbone_path)
    assert not metric.available and metric.reason.startswith("LPIPS linear-layer weights not found")


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown LPIPS backbone 'alexnet'"):
        LPIPSMetric(net="alexnet")
    assert lpips_module.MIN_SIZE["alex"] == 32
