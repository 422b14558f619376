"""Victim architectures: DLG's LeNet, a small ConvNet, CIFAR ResNet-18, a two-layer MLP, and user factories."""

from .convnet import ConvNet
from .lenet import LeNet
from .mlp import TwoLayerMLP
from .registry import MODELS, ModelSpec, build_model
from .resnet import ResNet18

__all__ = ["MODELS", "ModelSpec", "build_model", "LeNet", "ConvNet", "ResNet18", "TwoLayerMLP"]
