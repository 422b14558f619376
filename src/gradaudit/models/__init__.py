"""Victim architectures: DLG's LeNet, a small ConvNet, CIFAR ResNet-18, a two-layer MLP, and user factories."""

from .registry import MODELS, ModelSpec, build_model, register_model  # noqa: I001 - the registry first
# each architecture registers itself (register_model) where it is defined; this order is the listing order
from .lenet import LeNet
from .convnet import ConvNet
from .resnet import ResNet18
from .mlp import TwoLayerMLP
from .malicious import ImprintedModel, WideFeatureModel


def _discover() -> None:
    """Import every other module of this package, so a new architecture is one file with @register_model."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__, __name__ + "."):
        importlib.import_module(info.name)


_discover()

__all__ = ["MODELS", "ModelSpec", "build_model", "register_model", "ImprintedModel", "WideFeatureModel", "LeNet", "ConvNet", "ResNet18", "TwoLayerMLP"]
