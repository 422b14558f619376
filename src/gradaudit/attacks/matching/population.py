"""A population of candidate reconstructions optimised together: restarts and hyper-parameter candidates.

Every *member* is one (candidate, restart) pair. Members share the observation and the parameterization but
each has its own step size, its own distance and regulariser weights (:class:`~.objective.MatchingObjective`
takes them as arguments) and its own initialisation. Their states are stacked along a leading axis N, so one
``torch.func.vmap`` call evaluates the gradient of every member's objective, and Adam, being elementwise, is N
independent optimisers in one update (:class:`MemberAdam`, a per-member step size on torch's Adam rule).

:meth:`Population.keep` drops members (successive halving of the tuning attack, :mod:`.tuning`); the best
iterate of every member by a selection criterion (an observation-only score, lower is better) is tracked
as rendered images, so what an attack returns is the best state a member reached, not its last one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

Tree = dict[str, torch.Tensor]
#: starting points of the pixel members (see :func:`initial_pixels`)
INITS = ("randn", "rand", "zeros", "smooth")


@dataclass(frozen=True)
class Candidate:
    """One hyper-parameter setting of the matching attack (restarts of it share these)."""

    lr: float
    regularizers: tuple[tuple[str, float], ...]
    distance: str = "cosine"
    init: str = "randn"

    @property
    def weights(self) -> dict[str, float]:
        return dict(self.regularizers)

    def label(self) -> str:
        regs = ",".join(f"{k}={v:g}" for k, v in self.regularizers) or "no prior"
        return f"{self.distance} {regs} lr={self.lr:g} init={self.init}"

    def to_dict(self) -> dict:
        return {"lr": self.lr, "regularizers": self.weights, "distance": self.distance, "init": self.init}


class MemberAdam:
    """Adam over stacked member states with one step size per member (torch.optim.Adam's update rule).

    ``signed``: the update uses sign(gradient) (Inverting Gradients). ``step(scale)`` multiplies every step
    size by ``scale`` (the learning-rate schedule)."""

    def __init__(self, leaves: Tree, lr: torch.Tensor, signed: bool, betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr = lr.to(torch.float32)
        self.signed = signed
        self.b1, self.b2 = betas
        self.eps = eps
        self.t = 0
        self.m = {k: torch.zeros_like(v) for k, v in leaves.items()}
        self.v = {k: torch.zeros_like(v) for k, v in leaves.items()}

    def step(self, leaves: Tree, grads: Tree, scale: float = 1.0) -> Tree:
        self.t += 1
        bc1 = 1 - self.b1 ** self.t
        bc2 = (1 - self.b2 ** self.t) ** 0.5
        out = {}
        for k, p in leaves.items():
            g = grads[k].sign() if self.signed else grads[k]
            m, v = self.m[k], self.v[k]
            m.lerp_(g, 1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            denom = (v.sqrt() / bc2).add_(self.eps)
            step = (self.lr * (scale / bc1)).to(p.device).view(-1, *([1] * (p.dim() - 1)))
            out[k] = p - step * (m / denom)
        return out

    def keep(self, index: torch.Tensor) -> None:
        self.lr = self.lr[index.to(self.lr.device)]
        self.m = {k: v[index] for k, v in self.m.items()}
        self.v = {k: v[index] for k, v in self.v.items()}


@dataclass
class Population:
    """The stacked state of N members (see the module docstring).

    Attributes:
        theta: what is optimised, per member (pixels: ``{"x": [N, B, C, H, W]}``).
        const: fixed per-member tensors of the parameterization (e.g. a generator's input).
        labels: [N, B] hard labels, or [N, B, K] logits of soft labels optimised jointly (DLG).
        dist_w, reg_w: [N, n_distances], [N, n_regularizers] objective weights per member.
        candidate, restart: [N] indices of each member's candidate and restart.
        best_score: [N] best selection criterion reached (inf before the first check).
        best_x, best_labels: the rendered images / labels at that point.
    """

    theta: Tree
    const: Tree
    labels: torch.Tensor
    joint: bool
    dist_w: torch.Tensor
    reg_w: torch.Tensor
    candidate: torch.Tensor
    restart: torch.Tensor
    optimizer: MemberAdam
    best_score: torch.Tensor = field(init=False)
    best_x: torch.Tensor | None = field(init=False, default=None)
    best_labels: torch.Tensor | None = field(init=False, default=None)
    best_iteration: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.best_score = torch.full((self.size,), float("inf"))
        self.best_iteration = torch.full((self.size,), -1, dtype=torch.long)

    @property
    def size(self) -> int:
        return int(self.candidate.shape[0])

    def leaves(self) -> Tree:
        """The optimised tensors (labels too when they are learnt jointly)."""
        return {**self.theta, **({"__labels__": self.labels} if self.joint else {})}

    def set_leaves(self, leaves: Tree) -> None:
        self.theta = {k: v for k, v in leaves.items() if k != "__labels__"}
        if self.joint:
            self.labels = leaves["__labels__"]

    def record(self, score: torch.Tensor, x: torch.Tensor, iteration: int) -> None:
        """Keep, per member, the rendered batch ``x`` [N, B, ...] whose ``score`` is the lowest so far."""
        score = torch.where(torch.isfinite(score), score, torch.full_like(score, float("inf"))).detach().cpu()
        better = score < self.best_score
        if self.best_x is None:
            self.best_x = x.detach().clone()
            self.best_labels = self.labels.detach().clone()
        if bool(better.any()):
            idx = better.nonzero().flatten()
            self.best_x[idx.to(x.device)] = x.detach()[idx.to(x.device)]
            self.best_labels[idx.to(self.labels.device)] = self.labels.detach()[idx.to(self.labels.device)]
            self.best_score[idx] = score[idx]
            self.best_iteration[idx] = iteration

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the members at ``index`` (a 1-D long tensor), in that order."""
        dev = lambda t: index.to(t.device)  # noqa: E731
        self.theta = {k: v[dev(v)] for k, v in self.theta.items()}
        self.const = {k: v[dev(v)] for k, v in self.const.items()}
        self.labels = self.labels[dev(self.labels)]
        self.dist_w, self.reg_w = self.dist_w[dev(self.dist_w)], self.reg_w[dev(self.reg_w)]
        self.candidate, self.restart = self.candidate[index], self.restart[index]
        self.optimizer.keep(index)
        self.best_score, self.best_iteration = self.best_score[index], self.best_iteration[index]
        if self.best_x is not None:
            self.best_x = self.best_x[dev(self.best_x)]
            self.best_labels = self.best_labels[dev(self.best_labels)]


def members(candidates: list[Candidate], restarts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(candidate index, restart index) of every member, candidate-major."""
    cand = torch.arange(len(candidates)).repeat_interleave(restarts)
    rest = torch.arange(restarts).repeat(len(candidates))
    return cand, rest


def initial_pixels(candidates: list[Candidate], restarts: int, shape: tuple[int, ...], seed: int,
                   lo: torch.Tensor, hi: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[N, *shape] starting batches. Each initialisation draws its R restarts once from ``generator`` (in the
    order the candidates first use it), and restart r of every candidate with that initialisation starts from
    the same draw, so candidates differ by their hyper-parameters, not by luck. ``randn``: a standard normal
    in the normalised space; ``rand``: uniform pixels in the valid box; ``zeros``: the dataset's mean colour;
    ``smooth``: a normal draw at a quarter of the resolution, bilinearly upsampled. With one candidate this is
    exactly the draw of a single fixed attack with ``restarts`` restarts."""
    draws: dict[str, torch.Tensor] = {}
    for c in candidates:
        if c.init not in draws:
            draws[c.init] = _draw(c.init, restarts, shape, generator, lo, hi)
    return torch.cat([draws[c.init] for c in candidates])


def _draw(init: str, restarts: int, shape: tuple[int, ...], generator: torch.Generator, lo: torch.Tensor,
          hi: torch.Tensor) -> torch.Tensor:
    if init == "randn":
        return torch.randn(restarts, *shape, generator=generator)
    if init == "rand":
        return torch.rand(restarts, *shape, generator=generator) * (hi - lo).cpu() + lo.cpu()
    if init == "zeros":  # the dataset's mean colour, the same for every restart
        return torch.zeros(restarts, *shape)
    if init == "smooth":  # low frequencies only: a normal draw at 1/4 resolution, upsampled
        *lead, c, h, w = shape
        coarse = torch.randn(restarts * (math.prod(lead) if lead else 1), c, max(1, h // 4), max(1, w // 4),
                             generator=generator)
        fine = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        return fine.reshape(restarts, *shape)
    raise ValueError(f"unknown init {init!r}")


Projection = Callable[[Tree], Tree]

__all__ = ["Candidate", "MemberAdam", "Population", "Projection", "initial_pixels", "members"]
