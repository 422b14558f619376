"""The Observation: everything the server really receives, and nothing more.

An attack's only input. It holds the weights the server broadcast (theta_0) and the non-trainable state
(buffers), the client's shared update, and the metadata of the threat model (seed 002 section 2; methods.md
section 1): batch size B, the update protocol (FedSGD mean gradient g* = 1/B sum_j grad l(f(x_j), y_j), or
FedAvg theta_0 - theta_K after K local steps at learning rate lr), and which extras the server is granted (the
private labels, the batch-norm statistics of the private batch).

On disk an observation is two files: ``NAME.safetensors`` (tensors only; no pickle is ever loaded) and
``NAME.json`` (metadata plus one checksum over both files, :mod:`gradaudit.checked_files`, so a truncated or
tampered tensor file and any edited metadata field are refused). Every metadata field is type-checked on load,
and a model named as ``package.module:factory`` is only ever built when the caller trusts it
(:mod:`gradaudit.trust`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..checked_files import pair_paths, read_checked, write_checked
from ..errors import ConfigError, ObservationError
from ..models.registry import ModelSpec
from .local_training import LocalTraining
from .threat_model import ThreatModel

UpdateKind = Literal["gradient", "local_update"]
FORMAT_VERSION = 1


@dataclass
class DataSpec:
    """How inputs are represented: the normalisation the model expects and the valid pixel range [0, 1]."""

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSpec":
        if not isinstance(d, dict):
            raise ObservationError(f"'data' must be a mapping with name, mean and std, got {_short(d)}")
        try:
            spec = cls(str(d["name"]), tuple(_number(v, "data.mean") for v in d["mean"]),
                       tuple(_number(v, "data.std") for v in d["std"]))
        except KeyError as e:
            raise ObservationError(f"'data' lacks {e}") from None
        except TypeError:
            raise ObservationError("'data.mean' and 'data.std' must be lists of numbers") from None
        if not all(s > 0 for s in spec.std):
            raise ObservationError(f"'data.std' must be positive, got {list(spec.std)}")
        return spec


@dataclass
class Observation:
    """What an honest-but-curious (or malicious) server holds after one client's round.

    Attributes:
        model: the architecture (name, classes, input shape) the server sent.
        parameters: theta_0, named as ``model.named_parameters()``.
        buffers: non-trainable state sent with the model (e.g. BN running statistics).
        update: per-parameter shared update: the mean gradient (``update_kind="gradient"``) or
            theta_0 - theta_K (``"local_update"``).
        batch_size: B, the number of private samples behind the update.
        data: normalisation of the inputs.
        local_steps, local_lr: K (every SGD step) and lr of FedAvg local training (K=1 and lr=None for FedSGD).
        local_epochs, local_batch_size, local_momentum, local_weight_decay: the rest of the client's local
            SGD (:class:`~.local_training.LocalTraining`): E epochs of minibatches of size b in an order the
            server does not know (b None: K full-batch steps), momentum and weight decay as ``torch.optim.SGD``.
        labels: the private labels, when the threat model grants them (else None).
        bn_statistics: per BN layer (mean, biased variance) of the private batch at that layer's input,
            in forward order, when granted (else None).
        defenses: descriptions of the update transforms applied by the client, in order (public knowledge).
        extras: free-form JSON-serialisable metadata.
    """

    model: ModelSpec
    parameters: dict[str, torch.Tensor]
    update: dict[str, torch.Tensor]
    batch_size: int
    data: DataSpec
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    update_kind: UpdateKind = "gradient"
    local_steps: int = 1
    local_lr: float | None = None
    local_epochs: int = 1
    local_batch_size: int | None = None
    local_momentum: float = 0.0
    local_weight_decay: float = 0.0
    labels: torch.Tensor | None = None
    bn_statistics: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    defenses: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    #: None when built in memory or loaded with a full checksum; else what was not verified (``allow_legacy``)
    legacy: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Refuse malformed observations: missing update entries, shape mismatches, NaN/inf, bad metadata."""
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise ObservationError(f"batch_size must be an integer, got {_short(self.batch_size)}")
        if isinstance(self.local_steps, bool) or not isinstance(self.local_steps, int):
            raise ObservationError(f"local_steps must be an integer, got {_short(self.local_steps)}")
        if self.local_lr is not None and not (isinstance(self.local_lr, (int, float))
                                              and not isinstance(self.local_lr, bool)
                                              and math.isfinite(self.local_lr) and self.local_lr > 0):
            raise ObservationError(f"local_lr must be a finite number > 0 or null, got {_short(self.local_lr)}")
        if self.batch_size < 1:
            raise ObservationError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.update_kind not in ("gradient", "local_update"):
            raise ObservationError(f"update_kind must be 'gradient' or 'local_update', got '{self.update_kind}'")
        if self.update_kind == "local_update" and (self.local_lr is None or self.local_steps < 1):
            raise ObservationError("a local_update observation needs local_steps >= 1 and local_lr")
        if self.update_kind == "local_update":
            try:
                training = self.local_training
            except ConfigError as e:
                raise ObservationError(f"local training: {e}") from None
            if training.total_steps(self.batch_size) != self.local_steps:
                raise ObservationError(f"local_steps is {self.local_steps} but {training.describe(self.batch_size)} "
                                       f"on {self.batch_size} samples takes {training.total_steps(self.batch_size)}")
        missing = [k for k in self.parameters if k not in self.update]
        if missing:
            raise ObservationError(f"update has no entry for parameter '{missing[0]}'")
        extra = [k for k in self.update if k not in self.parameters]
        if extra:
            raise ObservationError(f"update has an entry '{extra[0]}' that is not a model parameter")
        for name, p in self.parameters.items():
            u = self.update[name]
            if tuple(u.shape) != tuple(p.shape):
                raise ObservationError(
                    f"update tensor '{name}' has shape {tuple(u.shape)} but the parameter has {tuple(p.shape)}")
        for kind, tensors in (("parameter", self.parameters), ("update", self.update), ("buffer", self.buffers)):
            for name, t in tensors.items():
                if t.is_floating_point() and not torch.isfinite(t).all():
                    raise ObservationError(f"{kind} tensor '{name}' contains NaN or inf; refusing it")
        if self.labels is not None:
            if self.labels.numel() != self.batch_size:
                raise ObservationError(f"{self.labels.numel()} labels given for batch_size {self.batch_size}")
            if self.labels.is_floating_point() or self.labels.is_complex() or self.labels.dtype == torch.bool:
                raise ObservationError(f"labels must be integers, got {self.labels.dtype}")
            if self.labels.numel() and not (0 <= int(self.labels.min()) and
                                            int(self.labels.max()) < self.model.num_classes):
                raise ObservationError(f"labels must lie in [0, {self.model.num_classes}) for the model's "
                                       f"{self.model.num_classes} classes, got {self.labels.tolist()[:8]}")
        for i, (m, v) in enumerate(self.bn_statistics or []):
            if m.shape != v.shape or m.dim() != 1:
                raise ObservationError(f"BN statistics {i}: mean and variance must be vectors of one shape, got "
                                       f"{tuple(m.shape)} and {tuple(v.shape)}")
            if not (torch.isfinite(m).all() and torch.isfinite(v).all() and (v >= 0).all()):
                raise ObservationError(f"BN statistics {i} contain NaN/inf or a negative variance; refusing them")
        if not isinstance(self.defenses, list) or not all(isinstance(d, str) for d in self.defenses):
            raise ObservationError(f"defenses must be a list of strings, got {_short(self.defenses)}")
        if not isinstance(self.extras, dict):
            raise ObservationError(f"extras must be a mapping, got {_short(self.extras)}")
        if len(self.data.mean) != self.model.input_shape[0] or len(self.data.std) != self.model.input_shape[0]:
            raise ObservationError("normalisation mean/std must have one entry per input channel")

    def check_model(self, model: nn.Module) -> None:
        """Check that parameters and buffers fit ``model``; name the first mismatching tensor and both shapes."""
        expected = dict(model.named_parameters())
        observed = list(self.parameters.items())
        for i, (name, p) in enumerate(expected.items()):
            if name not in self.parameters:
                other = (f"; at that position the observation has '{observed[i][0]}' with shape "
                         f"{tuple(observed[i][1].shape)}") if i < len(observed) else ""
                raise ObservationError(f"observation lacks parameter '{name}' of model '{self.model.name}' "
                                       f"(shape {tuple(p.shape)}){other}")
            got = tuple(self.parameters[name].shape)
            if got != tuple(p.shape):
                raise ObservationError(
                    f"tensor '{name}': observation has shape {got}, model '{self.model.name}' expects {tuple(p.shape)}")
        unknown = [k for k in self.parameters if k not in expected]
        if unknown:
            raise ObservationError(f"observation tensor '{unknown[0]}' is not a parameter of model '{self.model.name}'")
        for name, b in model.named_buffers():
            if name in self.buffers and tuple(self.buffers[name].shape) != tuple(b.shape):
                raise ObservationError(f"buffer '{name}': observation has shape {tuple(self.buffers[name].shape)}, "
                                       f"model expects {tuple(b.shape)}")

    @property
    def local_training(self) -> LocalTraining:
        """The client's local SGD (FedAvg observations only)."""
        if self.update_kind != "local_update":
            raise ObservationError("a FedSGD observation has no local training")
        minibatch = self.local_batch_size is not None
        return LocalTraining(float(self.local_lr), steps=1 if minibatch else self.local_steps,
                             epochs=self.local_epochs, batch_size=self.local_batch_size,
                             momentum=self.local_momentum, weight_decay=self.local_weight_decay)

    @property
    def threat_model(self) -> ThreatModel:
        """The threat model this update was observed under, named by what the server knows and controls
        (:mod:`.threat_model`): derived from the fields above, so it cannot disagree with them."""
        from ..models.registry import MALICIOUS_MODELS

        if self.bn_statistics is not None:
            bn = "known"
        else:
            bn = "unknown" if any(k.endswith("running_mean") for k in self.buffers) else "n/a"
        if self.update_kind == "gradient":
            update = "FedSGD"
        elif self.local_batch_size is None:
            update = f"FedAvg ({self.local_steps} full-batch steps)"
        else:
            update = f"FedAvg ({self.local_epochs} epochs of minibatches of {self.local_batch_size})"
        clients = self.extras.get("num_clients", 1)
        return ThreatModel(server="malicious" if self.model.name in MALICIOUS_MODELS else "honest",
                           labels=self.labels is not None, bn_statistics=bn,
                           clients=clients if isinstance(clients, int) and clients >= 1 else 1, update=update)

    @property
    def gradient_estimate(self) -> dict[str, torch.Tensor]:
        """The update expressed as a mean gradient: g* itself, or (theta_0 - theta_K) / (K lr) for FedAvg."""
        if self.update_kind == "gradient":
            return self.update
        scale = 1.0 / (self.local_steps * float(self.local_lr))
        return {k: v * scale for k, v in self.update.items()}

    def to(self, device: torch.device | str) -> "Observation":
        mv = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return Observation(
            model=self.model, parameters=mv(self.parameters), update=mv(self.update), batch_size=self.batch_size,
            data=self.data, buffers=mv(self.buffers), update_kind=self.update_kind, local_steps=self.local_steps,
            local_lr=self.local_lr, local_epochs=self.local_epochs, local_batch_size=self.local_batch_size,
            local_momentum=self.local_momentum, local_weight_decay=self.local_weight_decay, labels=None if self.labels is None else self.labels.to(device),
            bn_statistics=None if self.bn_statistics is None else
            [(m.to(device), v.to(device)) for m, v in self.bn_statistics],
            defenses=list(self.defenses), extras=dict(self.extras), legacy=self.legacy)

    # --------------------------------------------------------------------- I/O
    def metadata(self) -> dict[str, Any]:
        return {
            "format": "gradaudit-observation", "version": FORMAT_VERSION,
            "model": self.model.to_dict(), "data": self.data.to_dict(), "batch_size": self.batch_size,
            "update_kind": self.update_kind, "local_steps": self.local_steps, "local_lr": self.local_lr,
            "local_epochs": self.local_epochs, "local_batch_size": self.local_batch_size,
            "local_momentum": self.local_momentum, "local_weight_decay": self.local_weight_decay,
            "labels_known": self.labels is not None, "bn_statistics_known": self.bn_statistics is not None,
            "num_bn_layers": 0 if self.bn_statistics is None else len(self.bn_statistics),
            "defenses": list(self.defenses), "extras": self.extras,
            "threat_model": self.threat_model.to_dict(),
        }

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``path.safetensors`` and ``path.json`` (any suffix of ``path`` is replaced)."""
        tensors: dict[str, torch.Tensor] = {}
        for prefix, d in (("parameter/", self.parameters), ("update/", self.update), ("buffer/", self.buffers)):
            # own storage per tensor: autograd may return gradients that are views of one buffer (the ViT's
            # cls token and position embedding), which safetensors refuses to write
            tensors.update({prefix + k: v.detach().clone() for k, v in d.items()})
        if self.labels is not None:
            tensors["labels"] = self.labels.to(torch.int64)
        for i, (m, v) in enumerate(self.bn_statistics or []):
            tensors[f"bn/{i}/mean"] = m
            tensors[f"bn/{i}/var"] = v
        return write_checked(path, tensors, self.metadata(), json_default=_json_default)

    @classmethod
    def load(cls, path: str | Path, *, trust_code: bool = False, allow_legacy: bool = False) -> "Observation":
        """Load an observation saved by :meth:`save` (either file's path, or the common stem).

        Everything is checked before anything is built: the checksum over tensors and metadata (a file without
        one is refused unless ``allow_legacy``; then :attr:`legacy` says what was not verified), the type of
        every metadata field, that the tensors match what the metadata declares. The model spec is data: a
        ``package.module:factory`` in it is built later only if ``trust_code`` (see :mod:`gradaudit.trust`).
        """
        pair = read_checked(path, "gradaudit-observation", ObservationError, "observation",
                            allow_legacy=allow_legacy)
        js_path = pair_paths(path)[1]
        try:
            obs = _from_files(cls, pair.tensors, pair.meta, trust_code)
        except (ObservationError, ConfigError) as e:
            raise ObservationError(f"{js_path}: {e}") from None
        obs.legacy = pair.legacy
        return obs


_PREFIXES = ("parameter/", "update/", "buffer/", "bn/")


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ObservationError(f"'{what}' must hold finite numbers, got {_short(v)}")
    return float(v)


def _field(meta: dict[str, Any], key: str, kinds: tuple[type, ...], default: Any = ...) -> Any:
    """``meta[key]`` checked to be one of ``kinds`` (bool is never an int here); ``default`` when absent."""
    if key not in meta:
        if default is ...:
            raise ObservationError(f"lacks required field '{key}'")
        return default
    v = meta[key]
    if isinstance(v, bool) and bool not in kinds:
        raise ObservationError(f"'{key}' must be {' or '.join(k.__name__ for k in kinds)}, got {_short(v)}")
    if not isinstance(v, kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise ObservationError(f"'{key}' must be {names}, got {_short(v)}")
    return v


def _from_files(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], trust_code: bool) -> "Observation":
    """Build an Observation from a verified pair, checking every metadata field and the tensors' names."""
    pick = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
    unknown = [k for k in tensors if k != "labels" and not k.startswith(_PREFIXES)]
    if unknown:
        raise ObservationError(f"the tensor file holds '{unknown[0]}', which is not part of an observation")
    model = _field(meta, "model", (dict,))
    spec = ModelSpec.from_dict(model)
    labels_known = _field(meta, "labels_known", (bool,), default="labels" in tensors)
    if labels_known != ("labels" in tensors):
        raise ObservationError(f"'labels_known' is {str(labels_known).lower()} but the tensor file "
                               f"{'has no' if labels_known else 'has'} labels")
    bn = None
    if _field(meta, "bn_statistics_known", (bool,), default=False):
        n = _field(meta, "num_bn_layers", (int,))
        missing = [f"bn/{i}/{s}" for i in range(n) for s in ("mean", "var") if f"bn/{i}/{s}" not in tensors]
        if n < 1 or missing:
            raise ObservationError("'bn_statistics_known' is true but the tensor file lacks " +
                                   (f"'{missing[0]}'" if missing else "BN statistics (num_bn_layers < 1)"))
        bn = [(tensors[f"bn/{i}/mean"], tensors[f"bn/{i}/var"]) for i in range(n)]
    elif any(k.startswith("bn/") for k in tensors):
        raise ObservationError("'bn_statistics_known' is false but the tensor file has BN statistics")
    local_lr = _field(meta, "local_lr", (int, float, type(None)), default=None)
    return cls(
        model=spec.trusted(trust_code), parameters=pick("parameter/"), update=pick("update/"),
        buffers=pick("buffer/"), batch_size=_field(meta, "batch_size", (int,)),
        data=DataSpec.from_dict(_field(meta, "data", (dict,))),
        update_kind=_field(meta, "update_kind", (str,), default="gradient"),
        local_steps=_field(meta, "local_steps", (int,), default=1),
        local_lr=None if local_lr is None else float(local_lr),
        local_epochs=_field(meta, "local_epochs", (int,), default=1),
        local_batch_size=_field(meta, "local_batch_size", (int, type(None)), default=None),
        local_momentum=_number(_field(meta, "local_momentum", (int, float), default=0.0), "local_momentum"),
        local_weight_decay=_number(_field(meta, "local_weight_decay", (int, float), default=0.0),
                                   "local_weight_decay"),
        labels=tensors.get("labels"), bn_statistics=bn,
        defenses=list(_field(meta, "defenses", (list,), default=[])),
        extras=dict(_field(meta, "extras", (dict,), default={})))


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
