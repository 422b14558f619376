"""The Observation: everything the server really receives, and nothing more.

An attack's only input. It holds the weights the server broadcast (theta_0) and the non-trainable state
(buffers), the client's shared update, and the metadata of the threat model (seed 002 section 2; methods.md
section 1): batch size B, the update protocol (FedSGD mean gradient g* = 1/B sum_j grad l(f(x_j), y_j), or
FedAvg theta_0 - theta_K after K local steps at learning rate lr), and which extras the server is granted (the
private labels, the batch-norm statistics of the private batch).

On disk an observation is two files: ``NAME.safetensors`` (tensors only; no pickle is ever loaded) and
``NAME.json`` (metadata plus the SHA-256 of the tensor file, so a truncated or tampered file is refused).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..checked_files import pair_paths, read_checked, write_checked
from ..errors import ObservationError
from ..models.registry import ModelSpec

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
        return cls(str(d["name"]), tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))


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
        local_steps, local_lr: K and lr of FedAvg local training (K=1 and lr=None for FedSGD).
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
    labels: torch.Tensor | None = None
    bn_statistics: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    defenses: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Refuse malformed observations: missing update entries, shape mismatches, NaN/inf, bad metadata."""
        if self.batch_size < 1:
            raise ObservationError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.update_kind not in ("gradient", "local_update"):
            raise ObservationError(f"update_kind must be 'gradient' or 'local_update', got '{self.update_kind}'")
        if self.update_kind == "local_update" and (self.local_lr is None or self.local_steps < 1):
            raise ObservationError("a local_update observation needs local_steps >= 1 and local_lr")
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
        if self.labels is not None and self.labels.numel() != self.batch_size:
            raise ObservationError(f"{self.labels.numel()} labels given for batch_size {self.batch_size}")
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
            local_lr=self.local_lr, labels=None if self.labels is None else self.labels.to(device),
            bn_statistics=None if self.bn_statistics is None else
            [(m.to(device), v.to(device)) for m, v in self.bn_statistics],
            defenses=list(self.defenses), extras=dict(self.extras))

    # --------------------------------------------------------------------- I/O
    def metadata(self) -> dict[str, Any]:
        return {
            "format": "gradaudit-observation", "version": FORMAT_VERSION,
            "model": self.model.to_dict(), "data": self.data.to_dict(), "batch_size": self.batch_size,
            "update_kind": self.update_kind, "local_steps": self.local_steps, "local_lr": self.local_lr,
            "labels_known": self.labels is not None, "bn_statistics_known": self.bn_statistics is not None,
            "num_bn_layers": 0 if self.bn_statistics is None else len(self.bn_statistics),
            "defenses": list(self.defenses), "extras": self.extras,
        }

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``path.safetensors`` and ``path.json`` (any suffix of ``path`` is replaced)."""
        tensors: dict[str, torch.Tensor] = {}
        for prefix, d in (("parameter/", self.parameters), ("update/", self.update), ("buffer/", self.buffers)):
            tensors.update({prefix + k: v for k, v in d.items()})
        if self.labels is not None:
            tensors["labels"] = self.labels.to(torch.int64)
        for i, (m, v) in enumerate(self.bn_statistics or []):
            tensors[f"bn/{i}/mean"] = m
            tensors[f"bn/{i}/var"] = v
        return write_checked(path, tensors, self.metadata(), json_default=_json_default)

    @classmethod
    def load(cls, path: str | Path) -> "Observation":
        """Load an observation saved by :meth:`save` (either file's path, or the common stem)."""
        tensors, meta = read_checked(path, "gradaudit-observation", ObservationError, "observation",
                                     require_checksum=False)
        js_path = pair_paths(path)[1]
        pick = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        bn = None
        if meta.get("bn_statistics_known"):
            bn = [(tensors[f"bn/{i}/mean"], tensors[f"bn/{i}/var"]) for i in range(int(meta["num_bn_layers"]))]
        try:
            return cls(
                model=ModelSpec.from_dict(meta["model"]), parameters=pick("parameter/"), update=pick("update/"),
                buffers=pick("buffer/"), batch_size=int(meta["batch_size"]), data=DataSpec.from_dict(meta["data"]),
                update_kind=meta.get("update_kind", "gradient"), local_steps=int(meta.get("local_steps", 1)),
                local_lr=meta.get("local_lr"), labels=tensors.get("labels"), bn_statistics=bn,
                defenses=list(meta.get("defenses", [])), extras=dict(meta.get("extras", {})))
        except KeyError as e:
            raise ObservationError(f"{js_path} lacks required field {e}") from None


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
