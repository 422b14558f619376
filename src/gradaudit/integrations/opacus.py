"""Opacus as the victim's DP-SGD: per-sample clipping and noise done by Opacus, audited by gradaudit.

Opacus (Yousefpour et al. 2021, "Opacus: User-Friendly Differential Privacy Library in PyTorch"; tested with
1.6; ``pip install 'gradaudit[integrations]'``) makes a model private by wrapping it in a ``GradSampleModule``
(per-sample gradients g_j from layer hooks) and the optimizer in a ``DPOptimizer``, which for a batch of B
samples sets, per step,

    g~ = (1/B) [ sum_j g_j * min(1, C / (||g_j||_2 + 1e-6))  +  N(0, sigma^2 C^2 I) ]      (loss_reduction="mean")

-- the DP-SGD of Abadi et al. 2016 that :class:`gradaudit.defenses.DPSGD` implements with ``torch.func``
(without the 1e-6, a relative difference of about 1e-6 / ||g_j|| on clipped samples).

:class:`OpacusClient` is a :class:`gradaudit.threat.Client` whose DP-SGD step is Opacus' own: it wraps its
local copy of the model in a ``GradSampleModule``, steps a ``DPOptimizer`` (FedSGD: the privatized gradient is
the update; FedAvg: K privatized SGD steps, update theta_0 - theta_K), and records next to the project's own
epsilon (``extras["dp_epsilon"]``, :mod:`gradaudit.defenses.accountant`, RDP) the epsilons Opacus' accountants
give for the same mechanism (``extras["opacus_epsilon"] = {"rdp": ..., "prv": ...}``; PRV is None, with the
reason in ``extras["opacus_epsilon_notes"]``, for noise multipliers below :data:`PRV_MIN_NOISE`). A model that was already
made private (``GradSampleModule`` / the module returned by ``PrivacyEngine.make_private``) is accepted: the
client works on a clean copy of the module inside (rebuilt from the ModelSpec with its weights), so the
Observation names the parameters as the plain architecture does (``conv.weight``,
not ``_module.conv.weight``) and any attack can rebuild it from the ModelSpec.

Accounting: within one client the whole private batch is used every step, so the sampling rate is 1 and each
step is a full-batch Gaussian mechanism (one step for FedSGD, K for FedAvg), as for the project's own DP-SGD.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..defenses.base import UpdateTransform
from ..defenses.dpsgd import DPSGD
from ..errors import ConfigError
from ..models.registry import ModelSpec
from ..threat.client import Client, ServerKnowledge
from ..threat.observation import DataSpec, Observation

try:
    import opacus
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from opacus.validators import ModuleValidator
except ImportError as e:  # pragma: no cover - exercised only without opacus
    raise ImportError("gradaudit.integrations.opacus needs Opacus: pip install 'gradaudit[integrations]' "
                      f"(or 'opacus>=1.5'); import failed with: {e}") from None

ACCOUNTANTS = ("rdp", "prv")
#: Opacus' PRV accountant is not run below this noise multiplier. Measured with opacus 1.6 (q = 1, one step,
#: delta 1e-5): sigma 0.05 takes 0.3 s and ~370 MB; sigma 0.02 and 0.01 fail ("Discrete mean differs
#: significantly from continuous mean"); sigma 0.005 takes 27 s and 2.6 GB; sigma 0.001 grew past 16 GB.
PRV_MIN_NOISE = 0.05


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside an Opacus ``GradSampleModule`` (or the model itself)."""
    while isinstance(model, GradSampleModule) or hasattr(model, "_module") and type(model).__module__.startswith(
            "opacus"):
        model = model._module
    return model


def opacus_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                   accountant: str = "rdp") -> float:
    """epsilon of Opacus' ``RDPAccountant`` / ``PRVAccountant`` after ``steps`` DP-SGD steps (inf without noise)."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    if accountant not in ACCOUNTANTS:
        from ..errors import unknown_name

        raise unknown_name("Opacus accountant", accountant, ACCOUNTANTS)
    if steps == 0 or sample_rate == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    if accountant == "prv" and noise_multiplier < PRV_MIN_NOISE:
        raise ConfigError(f"Opacus' PRV accountant is not run for noise multiplier {noise_multiplier:g} < "
                          f"{PRV_MIN_NOISE:g}: its discretisation fails or needs gigabytes there; use 'rdp'")
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return float(acc.get_epsilon(delta))


class OpacusClient(Client):
    """A federated client whose DP-SGD (the first defense, ``dp``) runs in Opacus; see the module docstring.

    Args:
        model: the victim: a plain ``nn.Module`` or one made private by Opacus (``GradSampleModule``).
        dp: clipping norm C, noise multiplier sigma and delta (:class:`gradaudit.defenses.DPSGD`).
        transforms: further update transforms applied after DP-SGD (e.g. pruning).
        accountants: Opacus accountants whose epsilon is recorded ("rdp", "prv").
        Other arguments as :class:`gradaudit.threat.Client`.
    """

    def __init__(self, model: nn.Module, spec: ModelSpec, data: DataSpec, *, dp: DPSGD,
                 protocol: Literal["fedsgd", "fedavg"] = "fedsgd", local_steps: int = 1,
                 local_lr: float | None = None, transforms: Sequence[UpdateTransform] = (),
                 knowledge: ServerKnowledge = ServerKnowledge(), seed: int | None = None,
                 accountants: Sequence[str] = ACCOUNTANTS) -> None:
        if not isinstance(dp, DPSGD):
            raise ConfigError(f"dp must be a gradaudit.defenses.DPSGD (C, sigma, delta), got {type(dp).__name__}")
        bad = [a for a in accountants if a not in ACCOUNTANTS]
        if bad:
            from ..errors import unknown_name

            raise unknown_name("Opacus accountant", bad[0], ACCOUNTANTS)
        if unwrap(model) is not model:  # made private already: its submodules carry Opacus' hooks; copy clean
            from ..models.registry import build_model

            clean = build_model(spec)
            try:
                clean.load_state_dict(unwrap(model).state_dict())
            except RuntimeError as e:
                raise ConfigError(f"the Opacus-wrapped model does not fit ModelSpec '{spec.name}': {e}") from None
            model = clean
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ConfigError(f"Opacus cannot make model '{spec.name}' private: {errors[0]}"
                              + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
        super().__init__(model, spec, data, protocol=protocol, local_steps=local_steps, local_lr=local_lr,
                         transforms=[dp, *transforms], knowledge=knowledge, seed=seed)
        self.accountants = tuple(accountants)

    def share(self, images: torch.Tensor, labels: torch.Tensor) -> Observation:
        obs = super().share(images, labels)
        steps = self.local_steps if self.protocol == "fedavg" else 1
        obs.extras["dp_backend"] = f"opacus {opacus.__version__}"
        eps: dict[str, float | None] = {}
        for a in self.accountants:
            try:
                eps[a] = opacus_epsilon(self.dp.noise_multiplier, 1.0, steps, self.dp.delta, a)
            except (ConfigError, RuntimeError) as e:  # PRV at tiny noise: recorded as unavailable, with why
                eps[a] = None
                obs.extras.setdefault("opacus_epsilon_notes", {})[a] = str(e)
        obs.extras["opacus_epsilon"] = eps
        return obs

    def _private_update(self, local: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                        theta0: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Opacus' GradSampleModule + DPOptimizer: one privatized gradient (FedSGD) or K privatized SGD steps."""
        gsm = GradSampleModule(local)
        try:
            named = list(local.named_parameters())
            lr = self.local_lr if self.protocol == "fedavg" else 1.0
            optimizer = DPOptimizer(torch.optim.SGD([p for _, p in named], lr=lr),
                                    noise_multiplier=self.dp.noise_multiplier, max_grad_norm=self.dp.clip,
                                    expected_batch_size=x.shape[0], loss_reduction="mean",
                                    generator=self.generator)
            steps = self.local_steps if self.protocol == "fedavg" else 1
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(gsm(x), labels).backward()
                if self.protocol == "fedsgd":
                    optimizer.pre_step()  # clip, noise, scale: p.grad is the privatized mean gradient
                    return {k: p.grad.detach().clone() for k, p in named}
                optimizer.step()
            return {k: (theta0[k] - p.detach()) for k, p in named}
        finally:
            gsm._close()
