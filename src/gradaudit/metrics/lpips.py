"""LPIPS, the learned perceptual image patch similarity (Zhang, Isola, Efros, Shechtman and Wang 2018,
"The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR).

LPIPS compares deep features of a pretrained backbone (AlexNet by default): with ``F^l`` the unit-normalised
(along channels) activations of layer ``l`` of size ``H_l x W_l`` and ``w_l`` the learned per-channel weights,

    LPIPS(x, y) = sum_l 1/(H_l W_l) sum_{h,w} || w_l ⊙ (F^l_hw(x) - F^l_hw(y)) ||_2^2

Lower is more similar; 0 for identical images. The number is only meaningful with *both* the pretrained
backbone and the learned linear weights ``w_l``: a randomly initialised backbone gives a number that looks
plausible and means nothing. So :class:`LPIPSMetric` never downloads anything and never falls back to random
weights: it uses the ``lpips`` package (Zhang et al.'s reference implementation) for the architecture, loads
the linear weights that ship inside that package and the ImageNet backbone weights from a local file (the
torchvision checkpoint in the torch hub cache, or a path you give), checks that every parameter was loaded,
and otherwise reports itself unavailable with the reason.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from gradaudit.errors import ConfigError, GradauditError, unknown_name
from gradaudit.metrics.image import _check_pair

#: torchvision checkpoint file names of the backbones, as they appear in ``<torch hub dir>/checkpoints``.
BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
BACKBONE_NAMES = {"alex": "AlexNet", "vgg": "VGG16", "squeeze": "SqueezeNet 1.1"}
#: Smallest side each backbone accepts (AlexNet's stride-4 convolution and two max-pools need >= 31 pixels).
#: Smaller images are upsampled bilinearly to this size before LPIPS.
MIN_SIZE = {"alex": 32, "vgg": 16, "squeeze": 32}


class LPIPSUnavailableError(GradauditError, RuntimeError):
    """LPIPS was requested but its pretrained weights (or the ``lpips`` package) are not available offline."""


class _Unavailable(Exception):
    pass


def default_backbone_path(net: str) -> Path:
    """Where torchvision caches the backbone's ImageNet weights: ``<torch.hub.get_dir()>/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net]


def _load_state(path: Path, what: str) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read the file makes LPIPS unavailable
        raise _Unavailable(f"could not read {what} {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict):
        raise _Unavailable(f"{what} {path} is not a state dict")
    return state


def _copy_into(param: Tensor, source: Tensor, key: str, path: Path) -> None:
    if tuple(source.shape) != tuple(param.shape):
        raise _Unavailable(f"{path}: '{key}' has shape {tuple(source.shape)}, the model expects {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(source.to(param.dtype))


class LPIPSMetric:
    """LPIPS distance per image, from pretrained weights loaded offline only (Zhang et al. 2018).

    ``LPIPSMetric(net="alex", backbone_weights=None, device="cpu", version="0.1")`` tries to build the model at
    construction. Afterwards ``available`` says whether it can be used and ``reason`` says why not (None when
    available), e.g. ``"lpips package not installed"``, ``"import lpips failed: ..."`` or
    ``"pretrained AlexNet weights not found offline (...)"``.

    ``backbone_weights`` is a local torchvision checkpoint of the backbone (keys ``features.<i>.weight`` /
    ``.bias``); by default the torch hub cache (:func:`default_backbone_path`). The linear weights are those
    shipped in the ``lpips`` package (``lpips/weights/v<version>/<net>.pth``).

    Calling ``metric(x, y)`` on images in ``[0, 1]`` of shape ``[B, C, H, W]`` (C = 1 or 3; grayscale is
    repeated to 3 channels) maps them to ``[-1, 1]`` (``2 v - 1``), as LPIPS expects, and returns a tensor of
    shape ``[B]``. Images with a side below :data:`MIN_SIZE` are first upsampled bilinearly. Raises
    :class:`LPIPSUnavailableError` when not available.
    """

    def __init__(
        self,
        net: str = "alex",
        *,
        backbone_weights: str | Path | None = None,
        device: str | torch.device = "cpu",
        version: str = "0.1",
    ) -> None:
        if net not in BACKBONE_FILES:
            raise unknown_name("LPIPS backbone", str(net), BACKBONE_FILES)
        self.net = net
        self.version = version
        self.device = torch.device(device)
        self.available: bool = False
        self.reason: str | None = None
        self._model: torch.nn.Module | None = None
        try:
            self._model = self._build(Path(backbone_weights) if backbone_weights is not None else None)
        except _Unavailable as exc:
            self.reason = str(exc)
        else:
            self.available = True

    def _build(self, backbone_path: Path | None) -> torch.nn.Module:
        try:
            lpips_mod = importlib.import_module("lpips")
        except ModuleNotFoundError as exc:
            if exc.name == "lpips":
                raise _Unavailable("lpips package not installed") from None
            raise _Unavailable(f"import lpips failed: {type(exc).__name__}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - e.g. a broken torchvision raises RuntimeError on import
            raise _Unavailable(f"import lpips failed: {type(exc).__name__}: {exc}") from None

        package_file = getattr(lpips_mod, "__file__", None)
        if package_file is None:
            raise _Unavailable("import lpips failed: the module has no __file__ to locate its weights")
        lin_path = Path(package_file).parent / "weights" / f"v{self.version}" / f"{self.net}.pth"
        if not lin_path.is_file():
            raise _Unavailable(f"LPIPS linear-layer weights not found at {lin_path}")
        if backbone_path is None:
            backbone_path = default_backbone_path(self.net)
        if not backbone_path.is_file():
            raise _Unavailable(
                f"pretrained {BACKBONE_NAMES[self.net]} weights not found offline (looked for {backbone_path}; "
                "LPIPS never downloads them nor uses random weights)"
            )

        try:
            # pnet_rand=True: the lpips package must not fetch the backbone itself (through torchvision, which
            # may download); we load it below from the local file. pretrained=True: load the linear layers.
            model = lpips_mod.LPIPS(
                pretrained=True, net=self.net, version=self.version, pnet_rand=True, model_path=str(lin_path),
                verbose=False,
            )
        except Exception as exc:  # noqa: BLE001
            raise _Unavailable(f"building the lpips model failed: {type(exc).__name__}: {exc}") from None

        loaded: set[str] = set()
        # Backbone: lpips splits torchvision's `features` Sequential into net.slice1..N, keeping the indices as
        # module names, so net.sliceK.<i>.weight is torchvision's features.<i>.weight.
        backbone_state = _load_state(backbone_path, f"{BACKBONE_NAMES[self.net]} weights")
        for slice_name, sl in model.net.named_children():
            if not slice_name.startswith("slice"):
                continue
            for name, param in sl.named_parameters():
                key = f"features.{name}"
                source = backbone_state.get(key, backbone_state.get(name))
                if source is None:
                    raise _Unavailable(f"{backbone_path} lacks '{key}': not a {BACKBONE_NAMES[self.net]} checkpoint")
                _copy_into(param, source, key, backbone_path)
                loaded.add(f"net.{slice_name}.{name}")
        # Linear calibration layers (everything outside the backbone), checked rather than loaded loosely.
        lin_state = _load_state(lin_path, "LPIPS linear weights")
        for name, param in model.named_parameters():
            if name.startswith("net."):
                continue
            if name not in lin_state:
                raise _Unavailable(f"{lin_path} lacks '{name}'")
            _copy_into(param, lin_state[name], name, lin_path)
            loaded.add(name)
        missing = [name for name, _ in model.named_parameters() if name not in loaded]
        if missing:
            raise _Unavailable(f"no pretrained weights for LPIPS parameters {missing[:5]}")

        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        return model.to(self.device)

    def __repr__(self) -> str:
        state = "available" if self.available else f"unavailable: {self.reason}"
        return f"LPIPSMetric(net={self.net!r}, {state})"

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS distance between ``x[b]`` and ``y[b]`` for each ``b``; a tensor of shape ``[B]``."""
        if not self.available or self._model is None:
            raise LPIPSUnavailableError(f"LPIPS is unavailable: {self.reason}")
        _check_pair(x, y, "lpips")
        c, h, w = x.shape[1:]
        if c not in (1, 3):
            raise ConfigError(f"lpips: expected 1 or 3 channels, got {c} (shape {tuple(x.shape)})")
        out_device = x.device

        def prepare(t: Tensor) -> Tensor:
            t = t.to(self.device, torch.float32).clamp(0.0, 1.0)
            if c == 1:
                t = t.expand(-1, 3, -1, -1)
            min_size = MIN_SIZE[self.net]
            if min(h, w) < min_size:
                factor = min_size / min(h, w)
                size = (max(min_size, math.ceil(h * factor)), max(min_size, math.ceil(w * factor)))
                t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
            return 2.0 * t - 1.0  # [0, 1] -> [-1, 1]

        with torch.no_grad():
            d = self._model(prepare(x), prepare(y), normalize=False)
        return d.reshape(x.shape[0]).to(out_device)
