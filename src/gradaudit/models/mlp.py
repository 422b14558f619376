"""Two-layer perceptron f(x) = W2 relu(W1 vec(x) + b1) + b2: the network of seed 002's two-layer theory."""

from __future__ import annotations

from torch import nn

from .registry import register_model


@register_model("mlp")
class TwoLayerMLP(nn.Module):
    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32),
                 width: int = 256) -> None:
        super().__init__()
        d = 1
        for s in input_shape:
            d *= s
        self.fc1 = nn.Linear(d, width)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x.flatten(1))))
