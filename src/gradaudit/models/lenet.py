"""The LeNet variant of Deep Leakage from Gradients (Zhu, Liu, Han, NeurIPS 2019).

Three 5x5 convolutions (strides 2, 2, 1; 12 channels) with sigmoid activations and one linear classifier.
Sigmoid (not ReLU) keeps the gradient map smooth and twice differentiable everywhere, which is why DLG's
L-BFGS attack converges to near-exact reconstructions on it. The DLG reference code initialises every weight
and bias uniformly in [-0.5, 0.5]; ``init="dlg"`` (the default) does the same.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


@register_model("lenet")
class LeNet(nn.Module):
    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32),
                 width: int = 12, init: str = "dlg") -> None:
        super().__init__()
        c, h, w = input_shape
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(width, width, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(width, width, 5, padding=2, stride=1), nn.Sigmoid(),
        )
        with torch.no_grad():
            features = self.body(torch.zeros(1, c, h, w)).numel()
        self.fc = nn.Linear(features, num_classes)
        if init == "dlg":
            for p in self.parameters():
                nn.init.uniform_(p, -0.5, 0.5)
        elif init != "default":
            raise ValueError(f"unknown LeNet init '{init}'; valid: dlg, default")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))
