"""A stand-in for the ``lpips`` package, shaped like the real one, with weight files in a temporary folder."""

from __future__ import annotations

import sys
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn


class _FakeBackbone(nn.Module):
    """Like lpips.pretrained_networks.alexnet: torchvision `features` split into slices, indices kept as names."""

    def __init__(self) -> None:
        super().__init__()
        self.slice1 = nn.Sequential(OrderedDict([("0", nn.Conv2d(3, 4, 3)), ("1", nn.ReLU())]))
        self.slice2 = nn.Sequential(OrderedDict([("2", nn.Conv2d(4, 4, 3))]))


class _FakeLin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(4, 1, 1, bias=False))


class FakeLPIPS(nn.Module):
    """Records its constructor arguments and every forward call's inputs."""

    instances: list["FakeLPIPS"] = []

    def __init__(self, pretrained=True, net="alex", version="0.1", lpips=True, spatial=False, pnet_rand=False,
                 pnet_tune=False, use_dropout=True, model_path=None, eval_mode=True, verbose=True):  # fmt: skip
        super().__init__()
        self.kwargs = dict(pretrained=pretrained, net=net, version=version, pnet_rand=pnet_rand, model_path=model_path)
        self.net = _FakeBackbone()  # random init: the metric must overwrite all of it from the files
        self.lin0 = _FakeLin()
        self.calls: list[tuple[torch.Tensor, torch.Tensor, bool]] = []
        FakeLPIPS.instances.append(self)

    def forward(self, in0, in1, retPerLayer=False, normalize=False):
        self.calls.append((in0.clone(), in1.clone(), normalize))
        f0 = self.net.slice2(self.net.slice1(in0))
        f1 = self.net.slice2(self.net.slice1(in1))
        return self.lin0.model((f0 - f1) ** 2).mean(dim=(2, 3), keepdim=True)  # [B, 1, 1, 1] like lpips


def backbone_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "features.0.weight": torch.randn(4, 3, 3, 3, generator=g),
        "features.0.bias": torch.randn(4, generator=g),
        "features.2.weight": torch.randn(4, 4, 3, 3, generator=g),
        "features.2.bias": torch.randn(4, generator=g),
        "classifier.1.weight": torch.randn(2, 2, generator=g),  # torchvision checkpoints hold the head too
    }


def lin_state(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"lin0.model.1.weight": torch.rand(1, 4, 1, 1, generator=g)}


@dataclass
class FakeLPIPSEnv:
    package_dir: Path
    backbone_path: Path
    lin_path: Path
    backbone: dict[str, torch.Tensor] = field(default_factory=backbone_state)
    lin: dict[str, torch.Tensor] = field(default_factory=lin_state)

    @property
    def instances(self) -> list[FakeLPIPS]:
        """The fake models built so far in this test."""
        return FakeLPIPS.instances


@pytest.fixture
def fake_lpips(tmp_path, monkeypatch) -> FakeLPIPSEnv:
    """Installs a fake ``lpips`` module in sys.modules; linear weights in its package folder, backbone
    weights in tmp_path/alexnet.pth (pass it as ``backbone_weights``)."""
    pkg = tmp_path / "lpips_pkg"
    (pkg / "weights" / "v0.1").mkdir(parents=True)
    env = FakeLPIPSEnv(
        package_dir=pkg, backbone_path=tmp_path / "alexnet.pth", lin_path=pkg / "weights" / "v0.1" / "alex.pth"
    )
    torch.save(env.backbone, env.backbone_path)
    torch.save(env.lin, env.lin_path)
    module = types.ModuleType("lpips")
    module.__file__ = str(pkg / "__init__.py")
    module.LPIPS = FakeLPIPS
    FakeLPIPS.instances.clear()
    monkeypatch.setitem(sys.modules, "lpips", module)
    return env
