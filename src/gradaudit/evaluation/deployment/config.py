"""A deployment file: the model, data and federated set-up to audit, the candidate defenses and the budget.

Example (``configs/audit-demo.yaml`` is a complete one)::

    name: embedded-convnet-fedavg
    model:
      name: convnet                      # a registry name, or package.module:factory with --trust-model-code
      kwargs: {norm: none}
      weights: null                      # safetensors of the audited round; null: train one (below)
      train: {epochs: 3, lr: 0.05}       # how the audit trains the victim on the public part when no weights
    data:
      name: embedded                     # any dataset name, or image-folder with root
      split: train                       # the clients' private data
      public: 0.5                        # the share of it the server may know (when no other split is public)
    clients:                             # the client as it really trains
      protocol: fedavg                   # fedsgd | fedavg
      samples: 4                         # private samples per client per round
      local_epochs: 2
      local_batch_size: 2                # null: full-batch local steps (local_steps of them)
      local_lr: 0.05
      labels_known: true
    audit:
      rank: 16                           # samples ranked by LAVP and the gradient norm
      at_risk: 3                         # the most at risk of them are attacked ...
      typical: 1                         # ... and the most typical ones
      malicious_server: false            # add the malicious-server attacks (Robbing the Fed)
      prior: null                        # a generator checkpoint: add the generative-prior attack
    defenses: [[], [prune:0.9], [noise:0.01], ["dpsgd:1,1.1"]]
    epsilon_budget: 8                    # DP-SGD above this epsilon (one shared update) is not recommended
    threshold: {ssim: 0.5, psnr: 20}     # a reconstruction at or above either is "recognisable"
    utility: {rounds: 30, clients: 4}
    time_budget: 480                     # seconds for the whole audit (attacks get most of it)

Every section is validated (unknown keys refused, numbers finite) before any work or file is created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ...config import read_yaml_mapping
from ...errors import ConfigError
from ..sweep import AttackEntry, _defense_list, defense_label, format_validation_error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class VictimTraining(_Strict):
    """How the audit trains the victim when the deployment gives no weights (SGD with momentum, on the public
    part: the server's own data; ``epochs: 0`` audits a fresh initialisation)."""

    epochs: int = Field(default=3, ge=0)
    lr: float = Field(default=0.05, gt=0)
    batch_size: int = Field(default=16, ge=1)
    momentum: float = Field(default=0.9, ge=0, lt=1)


class ModelSection(_Strict):
    name: str = "convnet"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: Optional[str] = None
    train: VictimTraining = Field(default_factory=VictimTraining)


class DataSection(_Strict):
    name: str = "embedded"
    root: Optional[str] = None
    image_size: Optional[int] = Field(default=None, ge=4)
    split: str = "train"
    #: the share of the private split the server may know, used when the dataset has no disjoint public split
    public: float = Field(default=0.5, gt=0, lt=1)
    #: a split the server may know instead (e.g. ``test`` of a dataset whose splits are disjoint)
    public_split: Optional[str] = None
    download: bool = False


class ClientSection(_Strict):
    protocol: Literal["fedsgd", "fedavg"] = "fedavg"
    samples: int = Field(default=4, ge=1)
    local_steps: int = Field(default=1, ge=1)
    local_epochs: int = Field(default=1, ge=1)
    local_batch_size: Optional[int] = Field(default=None, ge=1)
    local_lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    labels_known: bool = True
    bn_statistics_known: bool = False

    def threat(self) -> dict[str, Any]:
        """The ``threat`` section of the run configs of the audit's cells."""
        out: dict[str, Any] = {"protocol": self.protocol, "batch_size": self.samples,
                               "labels_known": self.labels_known, "bn_statistics_known": self.bn_statistics_known}
        if self.protocol == "fedavg":
            out.update(local_steps=self.local_steps, local_lr=self.local_lr)
            if self.local_batch_size is not None:
                out.update(local_epochs=self.local_epochs, local_batch_size=self.local_batch_size)
            if self.momentum:
                out["local_momentum"] = self.momentum
            if self.weight_decay:
                out["local_weight_decay"] = self.weight_decay
        return out

    def utility_local(self) -> dict[str, Any] | None:
        """The ``local=`` options of the utility run (the same local training as the audited client)."""
        if self.protocol != "fedavg":
            return None
        local = {"local_epochs": self.local_epochs, "local_batch_size": self.local_batch_size,
                 "momentum": self.momentum, "weight_decay": self.weight_decay}
        return {k: v for k, v in local.items() if v not in (None, 0, 0.0) and not (k == "local_epochs" and v == 1)}


class AuditSection(_Strict):
    rank: int = Field(default=16, ge=1)
    at_risk: int = Field(default=3, ge=0)
    typical: int = Field(default=1, ge=0)
    proxy: str = "fused_rank_max"
    #: the attacks to run (default: the strongest honest-server attacks for the protocol, see plan.py)
    attacks: Optional[list[AttackEntry]] = None
    malicious_server: bool = False
    prior: Optional[str] = None
    iterations: int = Field(default=300, ge=1)

    @model_validator(mode="after")
    def _some(self) -> "AuditSection":
        if self.at_risk + self.typical < 1:
            raise ValueError("audit.at_risk + audit.typical must be at least 1: nothing would be attacked")
        if self.at_risk + self.typical > self.rank:
            raise ValueError(f"audit.rank ({self.rank}) must cover at_risk + typical "
                             f"({self.at_risk + self.typical}) samples")
        return self


class Threshold(_Strict):
    """A reconstruction is recognisable when its SSIM or its PSNR reaches these."""

    ssim: float = Field(default=0.5, gt=0, le=1)
    psnr: float = Field(default=20.0, gt=0)

    def recognisable(self, psnr: float | None, ssim: float | None) -> bool:
        return (ssim is not None and ssim >= self.ssim) or (psnr is not None and psnr >= self.psnr)

    def describe(self) -> str:
        return f"SSIM >= {self.ssim:g} or PSNR >= {self.psnr:g} dB"


class UtilitySection(_Strict):
    rounds: int = Field(default=30, ge=1)
    clients: int = Field(default=4, ge=1)
    #: the clients' local lr (FedAvg) or the server's step (FedSGD); default: clients.local_lr
    lr: Optional[float] = Field(default=None, gt=0)


class Deployment(_Strict):
    """A deployment to audit; see the module docstring."""

    name: str = "deployment"
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    clients: ClientSection = Field(default_factory=ClientSection)
    audit: AuditSection = Field(default_factory=AuditSection)
    defenses: list[list[str]] = Field(default_factory=lambda: [[]])
    epsilon_budget: Optional[float] = Field(default=None, gt=0)
    threshold: Threshold = Field(default_factory=Threshold)
    utility: UtilitySection = Field(default_factory=UtilitySection)
    time_budget: Optional[float] = Field(default=None, gt=0)
    #: the parallel workers the time budget is planned for (the command's --workers runs them)
    workers: int = Field(default=2, ge=1)
    seed: int = Field(default=0, ge=0)

    @field_validator("defenses", mode="before")
    @classmethod
    def _defenses(cls, v: Any) -> Any:
        if v is None:
            return [[]]
        if not isinstance(v, (list, tuple)) or not v:
            raise ConfigError("defenses must be a non-empty list of defense combinations, e.g. [[], [prune:0.9]]")
        chains = [_defense_list(i, entry) for i, entry in enumerate(v)]
        labels = [defense_label(c) for c in chains]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"defenses lists one combination twice: {labels}")
        if "none" not in labels:  # the verdict without a defense is the audit's first line
            chains.insert(0, [])
        return chains

    @model_validator(mode="after")
    def _consistent(self) -> "Deployment":
        if self.clients.protocol == "fedsgd" and (self.clients.local_batch_size is not None
                                                  or self.clients.local_epochs != 1):
            raise ValueError("clients.local_epochs / local_batch_size describe FedAvg; set clients.protocol: fedavg")
        if self.clients.local_batch_size is not None and self.clients.local_steps != 1:
            raise ValueError("clients: with local_batch_size the client trains local_epochs passes; leave "
                             "local_steps (full-batch steps) at 1")
        return self


def parse_deployment(data: Any) -> Deployment:
    if not isinstance(data, dict):
        raise ConfigError(f"a deployment file is a mapping of sections (model, data, clients, ...), got "
                          f"{type(data).__name__}")
    try:
        return Deployment.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, Deployment, "deployment")) from None


def load_deployment(path: str | Path) -> Deployment:
    """Read and validate a deployment YAML file (ConfigError with the field and a one-line reason)."""
    return parse_deployment(read_yaml_mapping(path, "deployment file", allow_empty=False))


__all__ = ["AuditSection", "ClientSection", "DataSection", "Deployment", "ModelSection", "Threshold",
           "UtilitySection", "VictimTraining", "load_deployment", "parse_deployment"]
