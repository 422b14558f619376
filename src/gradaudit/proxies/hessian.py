"""Hessians of the gradient-matching loss with respect to the input, at the ground truth (seed 000, LAVP).

Hong, Cho, Cho, Ahn, Kim, "Foreseeing Reconstruction Quality of Gradient Inversion: An Optimization
Perspective" (AAAI 2024, arXiv 2312.12488); methods.md section 7.

For one sample (x* in the model's *normalised* input space, flattened to D = C*H*W values, label y, weights
theta fixed) let

    g(x) = vec grad_theta CE(f_theta(x), y)         (a P-vector; the FedSGD update of a batch of one)
    g*   = g(x*),   J = dg/dx at x*                   (P x D)

and let the attacker minimise a matching loss L(x) = dist(g(x), g*). At x* the loss is minimal and its first
derivative vanishes, so the Hessian is a Gauss-Newton form H = J^T A J, exactly (no second-derivative term of
g survives, because it is multiplied by the residual derivative dist'(g*) = 0):

* L2 (DLG):  L = ||g(x) - g*||^2             ->  A = 2 I,                     H = 2 J^T J
* cosine (Inverting Gradients): L = 1 - <g, g*> / (||g|| ||g*||)
                                              ->  A = (I - u u^T) / ||g*||^2,  u = g* / ||g*||

(For the cosine: the g-Hessian of 1 - cos at g = g* is (I - u u^T)/||g*||^2; its g-gradient is zero there.)

A Hessian-vector product never forms J. Two routes compute ``J v`` and ``J^T w``:

* cached mixed partials (:class:`SampleLinearization`, used for one sample at a time): J is the mixed second
  derivative d^2 CE / d theta d x, so with one backward pass of CE(f_theta(x*), y) that keeps its graph
  (``create_graph=True``) giving both gradients g_theta = g(x*) and g_x = d CE / dx,

      J^T w = d/dx <g_theta, w>        J v = d/dtheta <g_x, v>         (Schwarz: the mixed partials agree)

  and each product is one further backward pass through that cached graph; nothing is recomputed per
  product. On ResNet-18 at 3x32x32 (one CPU thread) J v and J^T w take ~0.15 s each, against ~0.35 s for a
  forward-over-reverse ``jvp`` that re-evaluates the gradient map each time (a whole Hessian-vector product:
  0.33-0.39 s against 0.56-0.70 s, benchmarks/lavp_cost.py).
* ``torch.func`` (``_hvp_core``, used where products of many samples are ``vmap``-ed together): ``J v`` is a
  forward-mode ``jvp`` of x -> g(x) (forward-over-reverse) and ``J^T w`` a ``vjp`` (reverse-over-reverse);
  both compose with ``vmap``, so the products of N samples (each with its own x*, y and v) are one call.

The two agree to rounding (tests: float64, against the dense autograd Hessian of the loss itself).

Batch norm. The proxy predicts a *single-sample* attack (B = 1, the paper's setting), so by default
(``bn_mode="train"``) BN layers normalise with the statistics of that one sample, exactly as the FedSGD
client and :class:`~gradaudit.attacks.matching.victim.FunctionalVictim` compute its update; running
statistics are neither used nor updated, so the map is pure and ``vmap`` over samples keeps every sample's
statistics separate (each vmapped call is a batch of one). This is well defined as long as every BN layer sees
more than one spatial position (true for ResNet-18 / ConvNet at 32x32: the last stage is 4x4). ``bn_mode="eval"``
instead uses the running statistics sent with the model (``Observation.buffers``); use it to study a model
whose clients compute updates in eval mode. Dropout, if a user model has any, is always switched off.
Models without BN are unaffected by the choice.

The input space is the normalised one the model sees; eigenvalues in [0, 1] pixel space are those of
S H S with S = diag(1 / std) per channel (a per-channel rescaling; equal stds scale all eigenvalues by 1/std^2).
"""

from __future__ import annotations

import copy
from typing import Callable, Literal, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacfwd, jvp, vjp, vmap

from ..errors import ConfigError
from ..threat.client import batchnorm_layers
from ..threat.observation import Observation

Loss = Literal["l2", "cosine"]
BNMode = Literal["train", "eval"]
LOSSES: tuple[str, ...] = ("l2", "cosine")

# Anything a gradient map can be built from. FunctionalVictim is accepted duck-typed (it has .model/.params).
Source = Union[Observation, nn.Module, "GradientMap", object]


def _check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise ConfigError(f"unknown matching loss '{loss}'; valid: {', '.join(LOSSES)}")


class GradientMap:
    """The pure map x -> g(x) = vec grad_theta CE(f_theta(x[None]), y) of one sample, at fixed theta.

    Build it with :meth:`from_source` from an :class:`Observation` (theta_0 and buffers as the server sent
    them), a ``FunctionalVictim``, or an ``nn.Module`` (its current weights). The model is copied; the source
    is never modified.

    Attributes:
        model: a private copy of the architecture (parameters are passed functionally).
        params, buffers: the weights theta (in ``dtype``) and the non-trainable state.
        names: parameter names, in the order g concatenates them.
        input_shape: (C, H, W); ``dim`` = D = C*H*W; ``num_params`` = P.
        bn_mode: "train" (single-sample statistics, the default) or "eval" (running statistics).
    """

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                 input_shape: tuple[int, int, int], *, bn_mode: BNMode = "train",
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        if bn_mode not in ("train", "eval"):
            raise ConfigError(f"bn_mode must be 'train' or 'eval', got '{bn_mode}'")
        model = copy.deepcopy(model)
        for m in model.modules():  # drop hooks a FunctionalVictim may have registered (they capture state)
            m._forward_pre_hooks.clear()
            m._forward_hooks.clear()
        bns = batchnorm_layers(model)
        self.device = torch.device(device)
        self.dtype = dtype
        self.bn_mode = bn_mode
        self.has_batchnorm = bool(bns)
        self.names = [k for k, _ in model.named_parameters()]
        missing = [k for k in self.names if k not in params]
        if missing:
            raise ConfigError(f"no value given for model parameter '{missing[0]}'")
        self.params = {k: params[k].detach().to(self.device, dtype) for k in self.names}
        if bn_mode == "train":
            for bn in bns:  # statistics of the sample itself; no running-statistics side effect
                bn.track_running_stats = False
                bn.running_mean = None
                bn.running_var = None
                bn.num_batches_tracked = None
            model.train()
        else:
            model.eval()
            prefix = {id(m): n for n, m in model.named_modules()}
            for bn in bns:
                name = prefix[id(bn)]
                if f"{name}.running_mean" not in buffers or f"{name}.running_var" not in buffers:
                    raise ConfigError(f"bn_mode='eval' needs the running statistics of BN layer '{name}', "
                                      "which were not provided; use bn_mode='train'")
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()
        self.model = model.to(self.device)
        own = dict(model.named_buffers())
        self.buffers = {k: (v.detach().to(self.device, dtype) if v.is_floating_point() else v.detach().to(self.device))
                        for k, v in buffers.items() if k in own}
        self.input_shape = tuple(int(s) for s in input_shape)
        self.dim = int(torch.tensor(self.input_shape).prod())
        self.num_params = int(sum(p.numel() for p in self.params.values()))
        if self.has_batchnorm and bn_mode == "train":
            self._probe()

    def _probe(self) -> None:
        """Fail early, with advice, where single-sample BN statistics are degenerate (1 value per channel)."""
        try:
            with torch.no_grad():
                self.loss(self.params, torch.zeros(1, *self.input_shape, dtype=self.dtype, device=self.device),
                          torch.zeros(1, dtype=torch.int64, device=self.device))
        except ValueError as e:
            if "more than 1 value per channel" not in str(e):
                raise
            raise ConfigError(f"input {self.input_shape} is too small for single-sample batch norm (a BN layer "
                              f"sees one value per channel: {e}); use a larger input or bn_mode='eval'") from None

    # ------------------------------------------------------------ construction
    @classmethod
    def from_source(cls, source: Source, *, bn_mode: BNMode = "train", dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None,
                    input_shape: tuple[int, int, int] | None = None) -> "GradientMap":
        """Build from an Observation, a FunctionalVictim, an ``nn.Module`` (needs ``input_shape``) or a GradientMap.

        ``dtype`` defaults to float32 (float64 for exactness checks); a GradientMap with another dtype,
        device or bn_mode is rebuilt.
        """
        dtype = dtype or (source.dtype if isinstance(source, GradientMap) else torch.float32)
        if isinstance(source, GradientMap):
            dev = device or source.device
            if source.dtype == dtype and source.bn_mode == bn_mode and torch.device(dev) == source.device:
                return source
            return cls(source.model, source.params, source.buffers, source.input_shape, bn_mode=bn_mode,
                       dtype=dtype, device=dev)
        if isinstance(source, Observation):
            from ..models.registry import build_model

            model = build_model(source.model)
            source.check_model(model)
            return cls(model, source.parameters, source.buffers, source.model.input_shape, bn_mode=bn_mode,
                       dtype=dtype, device=device or "cpu")
        if hasattr(source, "model") and hasattr(source, "params") and hasattr(source, "buffers"):  # FunctionalVictim
            if bn_mode == "eval":
                raise ConfigError("a FunctionalVictim has no running statistics (it runs BN in train mode); "
                                  "build the proxy from the Observation to use bn_mode='eval'")
            shape = input_shape or _infer_input_shape(source)
            return cls(source.model, source.params, source.buffers, shape, bn_mode=bn_mode, dtype=dtype,
                       device=device or getattr(source, "device", "cpu"))
        if isinstance(source, nn.Module):
            if input_shape is None:
                raise ConfigError("building a proxy from an nn.Module needs input_shape=(C, H, W)")
            params = {k: v for k, v in source.named_parameters()}
            buffers = {k: v for k, v in source.named_buffers()}
            dev = device or (next(source.parameters()).device if params else "cpu")
            return cls(source, params, buffers, input_shape, bn_mode=bn_mode, dtype=dtype, device=dev)
        raise ConfigError(f"cannot build a gradient map from {type(source).__name__}; pass an Observation, a "
                          "FunctionalVictim or an nn.Module")

    # ----------------------------------------------------------------- the map
    def loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of a batch ``x`` [B, C, H, W] with hard labels ``y`` [B]."""
        logits = functional_call(self.model, (params, self.buffers), (x,))
        return F.cross_entropy(logits, y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """g(x) for one sample: ``x`` [C, H, W] (normalised), ``y`` a 0-d int64 tensor -> [P]."""
        g = grad(self.loss)(self.params, x.unsqueeze(0), y.reshape(1))
        return torch.cat([g[k].reshape(-1) for k in self.names])

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        """Cast one sample to this map's dtype/device and check its shape ([C, H, W] or [D])."""
        x = torch.as_tensor(x).to(self.device, self.dtype)
        if x.numel() != self.dim:
            raise ConfigError(f"a sample must have {self.dim} values {self.input_shape}, got shape {tuple(x.shape)}")
        return x.reshape(self.input_shape)

    def label(self, y) -> torch.Tensor:
        return torch.as_tensor(y, device=self.device).to(torch.int64).reshape(())


def _infer_input_shape(victim) -> tuple[int, int, int]:
    spec = getattr(victim, "spec", None)
    if spec is not None:
        return tuple(spec.input_shape)
    raise ConfigError("cannot infer the input shape of this FunctionalVictim; pass input_shape=(C, H, W)")


def _coefficients(g_star: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, b, u) such that A w = a w - b u <u, w>: L2 (2, 0, u), cosine (1/n^2, 1/n^2, u), n = ||g*||."""
    n2 = (g_star * g_star).sum()
    u = g_star / n2.clamp_min(torch.finfo(g_star.dtype).tiny).sqrt()
    if loss == "l2":
        return torch.full_like(n2, 2.0), torch.zeros_like(n2), u
    return 1.0 / n2, 1.0 / n2, u


def _hvp_core(gmap: GradientMap, x_star, y, a, b, u, v):
    """H v = J^T (a Jv - b u <u, Jv>) for one sample (pure; vmappable over every argument)."""
    f = lambda x: gmap(x, y)  # noqa: E731
    v = v.reshape(x_star.shape)
    _, jv = jvp(f, (x_star,), (v,))
    w = a * jv - b * u * (u * jv).sum()
    _, pullback = vjp(f, x_star)
    return pullback(w)[0].reshape(-1)


class SampleLinearization:
    """J v and J^T w of one sample by backward passes through one cached second-order graph.

    With L = CE(f_theta(x[None]), y) at (theta, x*), one ``torch.autograd.grad(L, (theta, x),
    create_graph=True)`` yields g_theta (= g(x*), the update) and g_x, both still differentiable. Then

        J^T w = grad(<g_theta, w>, x)     and     J v = grad(<g_x, v>, theta)

    because J = dg/dx = d^2 L / (d theta d x) and mixed partials commute. Each product is one backward pass
    through the retained graph (``retain_graph=True``); the graph (about two forward passes of activations)
    lives as long as this object. Parameters or inputs the loss does not depend on give zero blocks.

    Attributes: ``g_star`` ([P], detached), ``dim`` (D), ``num_params`` (P).
    """

    def __init__(self, gmap: GradientMap, x_star: torch.Tensor, y) -> None:
        self.dim, self.num_params = gmap.dim, gmap.num_params
        self._shapes = [gmap.params[k].shape for k in gmap.names]
        self._sizes = [gmap.params[k].numel() for k in gmap.names]
        params = [gmap.params[k].detach().clone().requires_grad_(True) for k in gmap.names]
        x = gmap.sample(x_star).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            loss = gmap.loss(dict(zip(gmap.names, params)), x.unsqueeze(0), gmap.label(y).reshape(1))
            grads = torch.autograd.grad(loss, params + [x], create_graph=True, allow_unused=True)
        g_theta = [torch.zeros_like(p) if g is None else g for g, p in zip(grads[:-1], params)]
        self._params, self._x = params, x
        self._g_theta = g_theta
        self._g_x = grads[-1]
        self.g_star = torch.cat([g.detach().reshape(-1) for g in g_theta])

    def jvp_parts(self, v: torch.Tensor) -> list[torch.Tensor]:
        """J v = d/dtheta <g_x, v>, one fresh tensor per parameter (no concatenation of the P-vector)."""
        if self._g_x is None or not self._g_x.requires_grad:
            return [torch.zeros_like(p) for p in self._params]
        out = torch.autograd.grad(self._g_x, self._params, grad_outputs=v.reshape(self._x.shape).to(self._x),
                                  retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if o is None else o.detach() for o, p in zip(out, self._params)]

    def vjp_parts(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """J^T w = d/dx <g_theta, w> for w given per parameter ([D])."""
        pairs = [(g, c) for g, c in zip(self._g_theta, parts) if g.requires_grad]
        if not pairs:
            return torch.zeros(self.dim, dtype=self._x.dtype, device=self._x.device)
        out = torch.autograd.grad([g for g, _ in pairs], self._x, grad_outputs=[c for _, c in pairs],
                                  retain_graph=True, allow_unused=True)[0]
        return (torch.zeros_like(self._x) if out is None else out).reshape(-1).detach()

    def split(self, w: torch.Tensor) -> list[torch.Tensor]:
        """A [P]-vector as per-parameter views."""
        return [c.reshape(s) for c, s in zip(torch.split(w.to(self.g_star), self._sizes), self._shapes)]

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """J v ([D] -> [P])."""
        return torch.cat([p.reshape(-1) for p in self.jvp_parts(v)])

    def vjp(self, w: torch.Tensor) -> torch.Tensor:
        """J^T w ([P] -> [D])."""
        return self.vjp_parts(self.split(w))

    def gauss_newton(self, v: torch.Tensor, a: float, b: float = 0.0, u_parts: list[torch.Tensor] | None = None
                     ) -> torch.Tensor:
        """J^T (a I - b u u^T) J v, in place on the per-parameter pieces of J v.

        On ResNet-18 (P = 11.2M) building a*Jv - b u <u, Jv> as new P-vectors costs ~0.1 s, a third of a
        product (fresh 45 MB allocations); scaling the pieces in place costs a few ms."""
        parts = self.jvp_parts(v)
        if b != 0.0:
            c = b * float(sum(torch.dot(q.reshape(-1), p.reshape(-1)) for q, p in zip(u_parts, parts)))
            torch._foreach_mul_(parts, a)
            torch._foreach_add_(parts, u_parts, alpha=-c)
        elif a != 1.0:
            torch._foreach_mul_(parts, a)
        return self.vjp_parts(parts)


class SampleHessian:
    """The Hessian of one sample's matching loss at x*, as an operator: ``H(v)`` for v [D] -> [D].

    Attributes: ``dim`` (D), ``loss``, ``g_star`` (the sample's gradient, [P]), ``g_norm`` (||g*||),
    ``matvecs`` (products computed so far). ``as_linear_operator()`` wraps it for scipy (float64 numpy).
    """

    def __init__(self, gmap: GradientMap, x_star: torch.Tensor, y, loss: Loss = "l2") -> None:
        _check_loss(loss)
        self.gmap, self.loss = gmap, loss
        self.x_star = gmap.sample(x_star)
        self.y = gmap.label(y)
        self._lin = SampleLinearization(gmap, self.x_star, self.y)  # one cached graph for every product
        self.g_star = self._lin.g_star
        self.g_norm = float(self.g_star.norm())
        self._a, self._b, self._u = _coefficients(self.g_star, loss)
        self._u_parts = self._lin.split(self._u)
        self.dim = gmap.dim
        self.matvecs = 0

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """J v ([D] -> [P])."""
        return self._lin.jvp(v)

    def vjp(self, w: torch.Tensor) -> torch.Tensor:
        """J^T w ([P] -> [D])."""
        return self._lin.vjp(w)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.matvecs += 1
        return self._lin.gauss_newton(v, float(self._a), float(self._b), self._u_parts)

    def as_linear_operator(self):
        from scipy.sparse.linalg import LinearOperator
        import numpy as np

        def mv(v):
            t = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(-1)).to(self.x_star)
            return self(t).to(torch.float64).cpu().numpy()

        return LinearOperator((self.dim, self.dim), matvec=mv, dtype=np.float64)


class BatchedHessian:
    """The Hessians of N samples' matching losses, applied together: ``H(V)`` for V [N, D] -> [N, D].

    Row i is H_i V_i, where H_i belongs to sample i (its own x*, y, loss). Products run as one
    ``vmap``-ed call of the ``torch.func`` route (``vectorize=True``) or one sample after another through
    each sample's cached :class:`SampleLinearization` (``vectorize=False``; same numbers to rounding, ~2x
    faster per product on CPU for ResNet-sized models, and it holds one second-order graph per sample).
    ``H(V, rows)`` applies only the Hessians of ``rows`` (V then has len(rows) rows): Lanczos uses it to
    drop samples that have converged. ``pullback(W)`` gives J_i^T W_i per row. ``linearizations`` (loop only)
    reuses graphs already built for these rows, e.g. one per sample shared by its L2 and cosine rows.
    """

    def __init__(self, gmap: GradientMap, x_stars: torch.Tensor, ys, losses: Loss | list[str] = "l2",
                 vectorize: bool = True, chunk: int | None = None,
                 linearizations: list[SampleLinearization] | None = None) -> None:
        x_stars = torch.as_tensor(x_stars).to(gmap.device, gmap.dtype)
        n = x_stars.shape[0]
        self.x_stars = x_stars.reshape(n, *gmap.input_shape)
        self.ys = torch.as_tensor(ys, device=gmap.device).to(torch.int64).reshape(n)
        self.losses = [losses] * n if isinstance(losses, str) else list(losses)
        if len(self.losses) != n:
            raise ConfigError(f"{len(self.losses)} losses given for {n} samples")
        for name in self.losses:
            _check_loss(name)
        self.gmap, self.vectorize, self.chunk = gmap, vectorize, chunk
        self.n, self.dim = n, gmap.dim
        if vectorize:
            self._lin = None
        elif linearizations is not None:  # the caller's graphs of these same (x*, y): no second build
            if len(linearizations) != n:
                raise ConfigError(f"{len(linearizations)} linearizations given for {n} samples")
            self._lin = list(linearizations)
        else:
            self._lin = [SampleLinearization(gmap, x, y) for x, y in zip(self.x_stars, self.ys)]
        self.g_star = self._gradients()
        self.g_norm = self.g_star.norm(dim=1)
        coef = [_coefficients(self.g_star[i], self.losses[i]) for i in range(n)]
        self._a = torch.stack([c[0] for c in coef]) if n else torch.zeros(0)
        self._b = torch.stack([c[1] for c in coef]) if n else torch.zeros(0)
        self._u = torch.stack([c[2] for c in coef]) if n else torch.zeros(0, gmap.num_params)
        self._batched = vmap(lambda x, y, a, b, u, v: _hvp_core(gmap, x, y, a, b, u, v))
        self.matvecs = 0

    def _gradients(self) -> torch.Tensor:
        if self.n == 0:
            return torch.zeros(0, self.gmap.num_params, dtype=self.gmap.dtype, device=self.gmap.device)
        if self.vectorize:
            return torch.cat([vmap(self.gmap)(x, y) for x, y in self._chunks(self.x_stars, self.ys)]).detach()
        return torch.stack([lin.g_star for lin in self._lin])

    def _chunks(self, *tensors):
        size = self.chunk or max(1, tensors[0].shape[0])
        for s in range(0, tensors[0].shape[0], size):
            yield tuple(t[s:s + size] for t in tensors)

    def __call__(self, V: torch.Tensor, rows: torch.Tensor | list[int] | None = None) -> torch.Tensor:
        idx = torch.arange(self.n) if rows is None else torch.as_tensor(rows, dtype=torch.int64)
        V = torch.as_tensor(V).to(self.x_stars).reshape(len(idx), self.dim)
        self.matvecs += len(idx)
        args = (self.x_stars[idx], self.ys[idx], self._a[idx], self._b[idx], self._u[idx], V)
        if len(idx) == 0:
            return V.clone()
        if self.vectorize:
            return torch.cat([self._batched(*c) for c in self._chunks(*args)]).detach()
        out = []
        for k, i in enumerate(idx.tolist()):
            lin = self._lin[i]
            out.append(lin.gauss_newton(V[k], float(self._a[i]), float(self._b[i]), lin.split(self._u[i])))
        return torch.stack(out)

    def pullback(self, W: torch.Tensor) -> torch.Tensor:
        """J_i^T W_i for every sample i: W [N, P] -> [N, D] (one vjp per sample, no loss coefficients)."""
        W = torch.as_tensor(W).to(self.g_star).reshape(self.n, self.gmap.num_params)
        if self.n == 0:
            return torch.zeros(0, self.dim, dtype=self.x_stars.dtype, device=self.x_stars.device)
        if not self.vectorize:
            return torch.stack([lin.vjp(w) for lin, w in zip(self._lin, W)])
        gmap = self.gmap

        def one(x, y, w):
            return vjp(lambda z: gmap(z, y), x)[1](w)[0].reshape(-1)

        return torch.cat([vmap(one)(*c) for c in self._chunks(self.x_stars, self.ys, W)]).detach()


def hvp_fn(source: Source, x_star: torch.Tensor, y, loss: Loss = "l2", **gmap_kwargs) -> SampleHessian:
    """The Hessian-vector product v -> H v of one sample's matching loss at its ground truth.

    ``source``: an Observation, FunctionalVictim, nn.Module (with ``input_shape=``) or GradientMap;
    ``x_star``: the sample in normalised input space ([C, H, W] or [D]); ``y``: its label; ``loss``: "l2" or
    "cosine". ``gmap_kwargs`` (bn_mode, dtype, device, input_shape) go to :meth:`GradientMap.from_source`.
    The returned callable maps [D] -> [D].
    """
    return SampleHessian(GradientMap.from_source(source, **gmap_kwargs), x_star, y, loss)


def batched_hvp_fn(source: Source, x_stars: torch.Tensor, ys, loss: Loss | list[str] = "l2",
                   vectorize: bool = True, chunk: int | None = None, **gmap_kwargs) -> BatchedHessian:
    """Hessian-vector products of N samples at once: V [N, D] -> [N, D] (row i through sample i's Hessian).

    ``loss`` is one name for all samples or a list with one per sample (L2 and cosine can share a batch).
    ``chunk`` bounds how many samples one vmapped call processes (memory).
    """
    return BatchedHessian(GradientMap.from_source(source, **gmap_kwargs), x_stars, ys, loss, vectorize, chunk)


def jacobian(source: Source, x_star: torch.Tensor, y, *, chunk: int = 256, **gmap_kwargs) -> torch.Tensor:
    """J = dg/dx at x* as a dense [P, D] matrix: forward mode (jvp, vmapped over ``chunk`` basis vectors at a
    time, as ``torch.func.jacfwd`` does); for tests and small models only."""
    gmap = GradientMap.from_source(source, **gmap_kwargs)
    x, yy = gmap.sample(x_star), gmap.label(y)
    f = lambda z: gmap(z, yy)  # noqa: E731
    if chunk >= gmap.dim:
        return jacfwd(f)(x).reshape(gmap.num_params, gmap.dim).detach()
    col = vmap(lambda e: jvp(f, (x,), (e.reshape(x.shape),))[1])
    eye = torch.eye(gmap.dim, dtype=gmap.dtype, device=gmap.device)
    return torch.cat([col(eye[s:s + chunk]) for s in range(0, gmap.dim, chunk)]).T.contiguous().detach()


def dense_hessian(source: Source, x_star: torch.Tensor, y, loss: Loss = "l2", **gmap_kwargs) -> torch.Tensor:
    """The [D, D] Hessian J^T A J built from the materialised Jacobian (for tests and small D)."""
    _check_loss(loss)
    gmap = GradientMap.from_source(source, **gmap_kwargs)
    x, yy = gmap.sample(x_star), gmap.label(y)
    J = jacobian(gmap, x, yy)
    g_star = gmap(x, yy).detach()
    a, b, u = _coefficients(g_star, loss)
    AJ = a * J - b * torch.outer(u, u @ J)
    H = J.T @ AJ
    return 0.5 * (H + H.T)


def matching_loss(source: Source, x_star: torch.Tensor, y, loss: Loss = "l2",
                  **gmap_kwargs) -> Callable[[torch.Tensor], torch.Tensor]:
    """The scalar attack objective x -> dist(g(x), g*) of one sample (x as [D] or [C, H, W]).

    The same distances as :mod:`gradaudit.attacks.matching.distances` (L2: squared Euclidean; cosine: global
    1 - cos over all parameters). Its Hessian at x* is what :func:`hvp_fn` applies.
    """
    _check_loss(loss)
    gmap = GradientMap.from_source(source, **gmap_kwargs)
    x0, yy = gmap.sample(x_star), gmap.label(y)
    g_star = gmap(x0, yy).detach()

    def L(x: torch.Tensor) -> torch.Tensor:
        g = gmap(x.reshape(gmap.input_shape), yy)
        if loss == "l2":
            return ((g - g_star) ** 2).sum()
        return 1 - (g * g_star).sum() / (g.norm() * g_star.norm())

    return L
