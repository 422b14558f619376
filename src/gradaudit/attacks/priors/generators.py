"""Image generators used as priors: the DCGAN of GIAS/GIML and an untrained U-Net deep image prior.

* :class:`DCGAN` - the generator of the GIAS reference implementation (Jeon et al., NeurIPS 2021, seed 001;
  Radford et al. 2016): z (``latent_dim`` = 100) -> ConvTranspose 4x4 to ``8w`` channels at ``b x b`` ->
  ``4w`` -> ``2w`` -> ``w`` (stride-2 ConvTranspose 4x4, each followed by BatchNorm + ReLU) -> 3x3 conv to C
  channels -> tanh, with ``w`` = 64 in the reference (512-256-128-64). The base size is ``b = ceil(H / 8)``,
  so the network draws ``8b x 8b`` pixels; when that exceeds the requested size (Fashion-MNIST: 32 -> 28) the
  centre ``H x W`` window is kept. Output in [-1, 1]; :func:`to_pixels` maps it to [0, 1].
  BatchNorm runs on running statistics (``eval()``) whenever the generator is used as a prior, so every image
  depends on its own latent only and the forward pass has no side effect (as ``torch.func.vmap`` requires).
* :class:`DCGANDiscriminator` - the matching critic used to train the DCGAN (``gradaudit prior train``).
* :class:`DeepImagePrior` - an untrained convolutional encoder-decoder with skip connections (U-Net style,
  Ulyanov et al., CVPR 2018; used as an attack prior in seed 002): a fixed random input (uniform in
  [0, 0.1), ``input_channels`` channels) is mapped to an image; the attack optimises the weights, never the
  pixels. Its BatchNorm layers keep no running statistics (always batch statistics), so a forward pass is pure.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...errors import ConfigError


def to_pixels(g: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] (tanh) -> pixels in [0, 1]."""
    return (g + 1) * 0.5


def _check(name: str, channels: int, image_size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if channels not in (1, 3):
        raise ConfigError(f"{name}: channels must be 1 or 3, got {channels}")
    if min(h, w) < 4:
        raise ConfigError(f"{name}: image size must be at least 4x4, got {h}x{w}")
    return int(h), int(w)


class DCGAN(nn.Module):
    """DCGAN generator: ``forward(z [N, latent_dim]) -> images [N, C, H, W]`` in [-1, 1]."""

    kind = "dcgan"

    def __init__(self, latent_dim: int = 100, channels: int = 3, image_size: int | tuple[int, int] = 32,
                 width: int = 64) -> None:
        super().__init__()
        self.height, self.width_px = _check("DCGAN", channels, image_size)
        if latent_dim < 1 or width < 1:
            raise ConfigError(f"DCGAN: latent_dim and width must be >= 1, got {latent_dim}, {width}")
        self.latent_dim, self.channels, self.width = latent_dim, channels, width
        self.base = math.ceil(max(self.height, self.width_px) / 8)
        w = width
        self.net = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 8 * w, self.base, 1, 0, bias=False), nn.BatchNorm2d(8 * w), nn.ReLU(True),
            nn.ConvTranspose2d(8 * w, 4 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(True),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(True),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True),
            nn.Conv2d(w, channels, 3, 1, 1), nn.Tanh())
        init_dcgan(self)

    def config(self) -> dict:
        return {"latent_dim": self.latent_dim, "channels": self.channels,
                "image_size": [self.height, self.width_px], "width": self.width}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z.reshape(z.shape[0], self.latent_dim, 1, 1))
        side = 8 * self.base
        top, left = (side - self.height) // 2, (side - self.width_px) // 2
        return out[:, :, top:top + self.height, left:left + self.width_px]


class DCGANDiscriminator(nn.Module):
    """DCGAN critic: three stride-2 4x4 convolutions (w, 2w, 4w; LeakyReLU 0.2, BN after the first), a linear logit."""

    def __init__(self, channels: int = 3, image_size: int | tuple[int, int] = 32, width: int = 64) -> None:
        super().__init__()
        h, w_px = _check("DCGANDiscriminator", channels, image_size)
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(channels, w, 4, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(4 * w), nn.LeakyReLU(0.2, True))
        with torch.no_grad():
            n = self.features(torch.zeros(2, channels, h, w_px)).numel() // 2
        self.head = nn.Linear(n, 1)
        init_dcgan(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1)).squeeze(1)


def init_dcgan(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), BN weights N(1, 0.02) and biases 0."""
    gen = torch.Generator().manual_seed(torch.initial_seed() % (2 ** 63))
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.02)
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(1 + torch.randn(m.weight.shape, generator=gen) * 0.02)
                m.bias.zero_()


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout, track_running_stats=False),
                         nn.LeakyReLU(0.2, True))


class DeepImagePrior(nn.Module):
    """U-Net-style deep image prior: ``forward(noise [N, input_channels, H, W]) -> images [N, C, H, W]`` in [-1, 1].

    ``depth`` down-sampling levels of ``width`` channels (3x3 stride-2 conv + 3x3 conv), a 4-channel skip
    connection at every level, bilinear up-sampling, then a 1x1 conv and tanh.
    """

    kind = "dip"

    def __init__(self, channels: int = 3, image_size: int | tuple[int, int] = 32, width: int = 32,
                 depth: int = 3, input_channels: int = 16, skip_channels: int = 4) -> None:
        super().__init__()
        self.height, self.width_px = _check("DeepImagePrior", channels, image_size)
        if depth < 1 or width < 1 or input_channels < 1 or skip_channels < 0:
            raise ConfigError("DeepImagePrior: depth, width and input_channels must be >= 1, skip_channels >= 0")
        self.channels, self.width, self.depth = channels, width, depth
        self.input_channels, self.skip_channels = input_channels, skip_channels
        self.down = nn.ModuleList()
        self.skip = nn.ModuleList()
        self.up = nn.ModuleList()
        cin = input_channels
        for _ in range(depth):
            self.skip.append(_block(cin, skip_channels, 1) if skip_channels else nn.Identity())
            self.down.append(nn.Sequential(_block(cin, width, 2), _block(width, width, 1)))
            cin = width
        for _ in range(depth):
            self.up.append(_block(width + skip_channels, width, 1))
        self.out = nn.Sequential(nn.Conv2d(width, channels, 1), nn.Tanh())

    def config(self) -> dict:
        return {"channels": self.channels, "image_size": [self.height, self.width_px], "width": self.width,
                "depth": self.depth, "input_channels": self.input_channels, "skip_channels": self.skip_channels}

    def random_input(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The fixed input of the prior: uniform noise in [0, 0.1) (Ulyanov et al.)."""
        return torch.rand(n, self.input_channels, self.height, self.width_px, generator=generator) * 0.1

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        skips, h = [], noise
        for down, skip in zip(self.down, self.skip):
            skips.append(skip(h) if self.skip_channels else None)
            h = down(h)
        for up, s in zip(self.up, reversed(skips)):
            h = nn.functional.interpolate(h, size=s.shape[-2:] if s is not None else None,
                                          scale_factor=None if s is not None else 2.0, mode="bilinear",
                                          align_corners=False)
            h = up(torch.cat([h, s], 1) if s is not None else h)
        h = nn.functional.interpolate(h, size=(self.height, self.width_px), mode="bilinear", align_corners=False) \
            if h.shape[-2:] != (self.height, self.width_px) else h
        return self.out(h)


GENERATORS: dict[str, type[nn.Module]] = {"dcgan": DCGAN, "dip": DeepImagePrior}


def build_generator(kind: str, **kwargs) -> nn.Module:
    """A generator by kind ("dcgan" or "dip") with its keyword arguments (as stored in a checkpoint)."""
    from ...errors import unknown_name

    if kind not in GENERATORS:
        raise unknown_name("generator kind", kind, GENERATORS)
    if "image_size" in kwargs and isinstance(kwargs["image_size"], list):
        kwargs = {**kwargs, "image_size": tuple(kwargs["image_size"])}
    try:
        return GENERATORS[kind](**kwargs)
    except TypeError as e:
        raise ConfigError(f"generator '{kind}': bad arguments {kwargs}: {e}") from None


@torch.no_grad()
def calibrate_batchnorm(generator: nn.Module, n: int = 256, seed: int = 0) -> nn.Module:
    """Set a DCGAN's BN running statistics from ``n`` random latents (no data involved), then ``eval()``.

    An untrained generator's running statistics (mean 0, variance 1) do not match its activations, so in
    ``eval()`` mode the DCGAN initialisation (weights N(0, 0.02)) would shrink every image to flat grey;
    GIML starts from such a generator, and this data-free calibration gives it normalised activations.
    """
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in generator.modules() if isinstance(m, nn.BatchNorm2d) and m.track_running_stats]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batch
    generator.train()
    device = next(generator.parameters()).device
    generator(torch.randn(n, generator.latent_dim, generator=gen).to(device))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return generator.eval()
