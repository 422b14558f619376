"""A small convolutional network of the kind Inverting Gradients (Geiping et al., NeurIPS 2020) attacks.

conv3x3(w) - norm - ReLU, conv3x3(2w) - norm - ReLU, avg-pool 2, conv3x3(2w) - norm - ReLU, avg-pool 2,
conv3x3(4w) - norm - ReLU, adaptive avg-pool 4x4, linear. ``norm`` is "bn" (batch norm, default; its batch
statistics are what GradInversion-style BN matching uses) or "none".
"""

from __future__ import annotations

from torch import nn

from .registry import register_model


def _block(cin: int, cout: int, norm: str) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none")]
    if norm == "bn":
        layers.append(nn.BatchNorm2d(cout))
    elif norm != "none":
        raise ValueError(f"unknown norm '{norm}'; valid: bn, none")
    layers.append(nn.ReLU())
    return layers


@register_model("convnet")
class ConvNet(nn.Module):
    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32),
                 width: int = 32, norm: str = "bn") -> None:
        super().__init__()
        c = input_shape[0]
        self.features = nn.Sequential(
            *_block(c, width, norm),
            *_block(width, 2 * width, norm),
            nn.AvgPool2d(2),
            *_block(2 * width, 2 * width, norm),
            nn.AvgPool2d(2),
            *_block(2 * width, 4 * width, norm),
            nn.AdaptiveAvgPool2d(4),
        )
        self.fc = nn.Linear(4 * width * 16, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))
