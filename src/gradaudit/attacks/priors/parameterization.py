"""Image parameterizations: the candidate batch as a function x = P(theta) of what the attack optimises.

The gradient-matching objective J(x) of :mod:`gradaudit.attacks.matching.engine` becomes J(P(theta)): the
attack optimises theta and the victim only ever sees rendered images. Every renderer maps generator output
g in [-1, 1] to pixels p = (g + 1) / 2 and normalises them exactly like real inputs,
x = (p - mean) / std with the observation's ``data.mean`` / ``data.std``.

==============  ===========================================  ===========================================
name            theta (optimised)                            fixed
==============  ===========================================  ===========================================
``latent``      z [B, d] (GI-z)                              generator weights w
``generator``   one copy of w shared by the batch (GI-w)     z [B, d]
``gias``        one copy w_i per image (GIAS)                z_i [B, d] (the result of the GI-z phase)
``dip``         U-Net weights (deep image prior)             random input [B, c, H, W]
==============  ===========================================  ===========================================

Each parameterization holds theta and the fixed tensors with a leading restart axis R, and ``render(theta_r,
const_r)`` is a pure function of one restart, so the engine can batch restarts with ``torch.func.vmap``. GIAS's
per-image copies are one more vmap: the weights are stacked to [B, ...] and
``vmap(lambda w_i, z_i: functional_call(G, w_i, z_i))`` renders the whole batch in one vectorised call (no
Python loop over images). The generator runs in ``eval()`` mode (BatchNorm on its running statistics), so an
image depends on its own latent and weights only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

from .generators import DeepImagePrior, to_pixels

Tree = dict[str, torch.Tensor]


@dataclass
class RenderContext:
    """What a parameterization is built from: the generator (or None), the current latents z [R, B, d] (or
    None), the normaliser, restarts R, batch size B, the image shape, the seed and the device."""

    G: nn.Module | None
    z: torch.Tensor | None
    norm: Callable[[torch.Tensor], torch.Tensor]
    restarts: int
    batch: int
    shape: tuple[int, int, int]
    seed: int
    device: torch.device


@dataclass(frozen=True)
class ParameterizationInfo:
    """A registered parameterization: its builder and whether it needs a generator prior."""

    name: str
    build: Callable[[RenderContext], "Parameterized"] | None
    needs_generator: bool


#: name -> declaration, filled by :func:`register_parameterization` on each builder ("pixels" is the engine's
#: own: the images themselves)
PARAMETERIZATIONS: dict[str, ParameterizationInfo] = {"pixels": ParameterizationInfo("pixels", None, False)}


def register_parameterization(name: str, *, needs_generator: bool):
    """Decorator on ``build(ctx: RenderContext) -> Parameterized``: the parameterization ``name``."""
    def decorate(build):
        PARAMETERIZATIONS[name] = ParameterizationInfo(name, build, needs_generator)
        return build
    return decorate


@dataclass
class Parameterized:
    """theta (trainable, leading axis R), const (fixed, leading axis R), a renderer and the latent's key."""

    theta: Tree
    const: Tree
    render: Callable[[Tree, Tree], torch.Tensor]
    latent_key: str | None = None


def normalizer(mean, std, device) -> Callable[[torch.Tensor], torch.Tensor]:
    m = torch.tensor(mean, device=device, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, device=device, dtype=torch.float32).view(-1, 1, 1)
    return lambda g: (to_pixels(g) - m) / s


def _weights(module: nn.Module) -> tuple[Tree, Tree]:
    params = {k: v.detach() for k, v in module.named_parameters()}
    buffers = {k: v.detach() for k, v in module.named_buffers()}
    return params, buffers


def latent(G: nn.Module, z: torch.Tensor, norm) -> Parameterized:
    """GI-z: optimise z [R, B, d]; G frozen."""
    params, buffers = _weights(G)

    def render(theta: Tree, const: Tree) -> torch.Tensor:
        return norm(functional_call(G, (params, buffers), (theta["z"],)))

    return Parameterized({"z": z.clone()}, {}, render, latent_key="z")


def generator(G: nn.Module, z: torch.Tensor, norm) -> Parameterized:
    """GI-w: optimise one copy of G's weights per restart (shared by the batch); z [R, B, d] fixed."""
    params, buffers = _weights(G)
    R = z.shape[0]
    theta = {k: v.unsqueeze(0).repeat(R, *([1] * v.dim())) for k, v in params.items()}

    def render(theta: Tree, const: Tree) -> torch.Tensor:
        return norm(functional_call(G, (theta, buffers), (const["z"],)))

    return Parameterized(theta, {"z": z.clone()}, render)


def gias(G: nn.Module, z: torch.Tensor, norm, weights: Tree | None = None) -> Parameterized:
    """GIAS: one copy of G per image ([R, B, ...] stacked weights), z [R, B, d] fixed, rendered by one vmap."""
    params, buffers = _weights(G)
    R, B = z.shape[:2]
    base = weights if weights is not None else params
    theta = {k: v.reshape(1, 1, *v.shape).repeat(R, B, *([1] * v.dim())) for k, v in base.items()}

    def one(w: Tree, zi: torch.Tensor) -> torch.Tensor:
        return functional_call(G, (w, buffers), (zi.unsqueeze(0),)).squeeze(0)

    def render(theta: Tree, const: Tree) -> torch.Tensor:
        return norm(vmap(one)(theta, const["z"]))

    return Parameterized(theta, {"z": z.clone()}, render)


def gias_loop_render(G: nn.Module, norm) -> Callable[[Tree, Tree], torch.Tensor]:
    """The same rendering as :func:`gias` by a Python loop over images (reference for tests)."""
    _, buffers = _weights(G)

    def render(theta: Tree, const: Tree) -> torch.Tensor:
        B = const["z"].shape[0]
        out = [functional_call(G, ({k: v[i] for k, v in theta.items()}, buffers), (const["z"][i:i + 1],))
               for i in range(B)]
        return norm(torch.cat(out))

    return render


def dip(prior_factory: Callable[[], DeepImagePrior], R: int, B: int, norm, seed: int,
        device: torch.device) -> Parameterized:
    """Deep image prior: R independently initialised U-Nets (seeded), each with its own fixed random input."""
    nets, inputs = [], []
    for r in range(R):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1000 + r)
            net = prior_factory()
        gen = torch.Generator().manual_seed(seed * 1000 + r)
        nets.append(net.to(device))
        inputs.append(net.random_input(B, generator=gen).to(device))
    template = nets[0]
    names = [k for k, _ in template.named_parameters()]
    theta = {k: torch.stack([dict(n.named_parameters())[k].detach() for n in nets]) for k in names}
    buffers = {k: v.detach() for k, v in template.named_buffers()}

    def render(theta: Tree, const: Tree) -> torch.Tensor:
        return norm(functional_call(template, (theta, buffers), (const["input"],)))

    return Parameterized(theta, {"input": torch.stack(inputs)}, render)


# ------------------------------------------------------------------------------------------ registrations
@register_parameterization("latent", needs_generator=True)
def _latent(ctx: RenderContext) -> Parameterized:
    return latent(ctx.G, ctx.z, ctx.norm)


@register_parameterization("generator", needs_generator=True)
def _generator(ctx: RenderContext) -> Parameterized:
    return generator(ctx.G, ctx.z, ctx.norm)


@register_parameterization("gias", needs_generator=True)
def _gias(ctx: RenderContext) -> Parameterized:
    return gias(ctx.G, ctx.z, ctx.norm)


@register_parameterization("dip", needs_generator=False)
def _dip(ctx: RenderContext) -> Parameterized:
    c, h, w = ctx.shape
    return dip(lambda: DeepImagePrior(channels=c, image_size=(h, w)), ctx.restarts, ctx.batch, ctx.norm, ctx.seed,
               ctx.device)
