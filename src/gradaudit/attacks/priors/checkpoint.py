"""Generator checkpoints (safetensors + JSON, checksummed) and the held-out protocol.

A checkpoint is ``NAME.safetensors`` (tensors only; no pickle is ever loaded) plus ``NAME.json``: the format,
the generator's kind and constructor arguments, the training provenance (dataset, split, the training indices
as sorted ``[start, stop)`` ranges and their SHA-256, image shape, latent dimension, training steps) and the
SHA-256 of the tensor file, exactly as :class:`~gradaudit.threat.Observation` does, so a truncated or
tampered file is refused.

Held-out protocol (seed 001): a prior must not have seen the images it is evaluated on.
:func:`check_held_out` compares the evaluation images (dataset, split, indices) with the checkpoint's
provenance and raises :class:`~gradaudit.errors.ConfigError` on any overlap, unless the caller passes
``allow_train_overlap=True``. Splits of ``embedded`` hold the same 64 images, so its split names are ignored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ...checked_files import CheckedPair, read_checked, write_checked
from ...errors import ConfigError, GradauditError
from ...trust import is_code_reference, load_code_reference
from .generators import build_generator

FORMAT = "gradaudit-generator"


class CheckpointError(GradauditError, ValueError):
    """A generator checkpoint is missing, malformed, tampered with, or was trained on the evaluation images."""


def _base(path: str | Path) -> Path:
    base = Path(path)
    return base.with_suffix("") if base.suffix in (".safetensors", ".json") else base


def save_checked(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``path.safetensors`` and ``path.json`` (meta + the tensor file's SHA-256), atomically per file."""
    return write_checked(_base(path), tensors, meta)


def load_checked(path: str | Path, fmt: str, *, allow_legacy: bool = False) -> CheckedPair:
    """Read a pair written by :func:`save_checked`; refuse a wrong format, a bad checksum or a corrupt file."""
    return read_checked(_base(path), fmt, CheckpointError, "checkpoint", allow_legacy=allow_legacy)


def index_ranges(indices: Iterable[int]) -> list[list[int]]:
    """Sorted distinct indices as half-open ``[start, stop)`` runs: [0,1,2,5] -> [[0, 3], [5, 6]]."""
    runs: list[list[int]] = []
    for i in sorted(set(int(v) for v in indices)):
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return runs


def indices_sha256(indices: Iterable[int]) -> str:
    return hashlib.sha256(json.dumps(index_ranges(indices)).encode()).hexdigest()


def _in_ranges(i: int, runs: Sequence[Sequence[int]]) -> bool:
    import bisect

    k = bisect.bisect_right([r[0] for r in runs], i) - 1
    return k >= 0 and runs[k][0] <= i < runs[k][1]


@dataclass
class Provenance:
    """What a generator was trained on: dataset, split and indices (empty for GIML: gradients only)."""

    dataset: str | None = None
    split: str | None = None
    indices: list[int] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "train_indices": index_ranges(self.indices),
                "train_indices_sha256": indices_sha256(self.indices), "num_train_images": len(set(self.indices)),
                "note": self.note}


def check_held_out(meta: dict[str, Any], dataset: str, indices: Sequence[int], split: str = "train", *,
                   allow_train_overlap: bool = False, labels: Sequence[int] | None = None) -> None:
    """Refuse a prior trained on any of the evaluation images ``dataset[split][indices]``.

    ``meta`` is a checkpoint's metadata (its ``training`` section is read). Raises ConfigError naming the
    first overlapping index, unless ``allow_train_overlap``. A checkpoint without provenance is refused too
    (its training data cannot be shown to be disjoint). What counts as overlap comes from the dataset's
    declaration (:func:`gradaudit.data.registry.dataset_info`): when its splits hold the same images (embedded,
    lfw) the split names do not separate them, and when it groups images by source (embedded: the crops of one
    photo, ``labels``) a prior that saw another image of the same source is not held out either.
    """
    if allow_train_overlap:
        return
    training = meta.get("training")
    if not isinstance(training, dict) or "train_indices" not in training:
        raise ConfigError("the generator checkpoint records no training data, so it cannot be shown to be held "
                          "out from the evaluation images; pass --force / allow_train_overlap=True to use it anyway")
    if training.get("dataset") != dataset:
        return
    from ...data.registry import dataset_info, splits_share_images

    same_pool = splits_share_images(dataset) or training.get("split") == split
    if not same_pool:
        return
    runs = training["train_indices"]
    seen = [i for i in indices if _in_ranges(int(i), runs)]
    if not seen and labels is not None and dataset_info(dataset).source_groups == "label":
        trained = {int(labels[i]) for r in runs for i in range(r[0], min(r[1], len(labels)))}
        shared = [i for i in indices if int(labels[int(i)]) in trained]
        if shared:
            raise ConfigError(f"the generator was trained on images from the same source as evaluation image "
                              f"{shared[0]} of {dataset} (source group {int(labels[int(shared[0])])}: crops of one "
                              f"photo share its content): hold out whole groups (--exclude-labels) or pass --force "
                              f"/ allow_train_overlap=True")
    if seen:
        raise ConfigError(f"the generator was trained on evaluation image {seen[0]} of {dataset} ({split} split; "
                          f"{len(seen)} of {len(indices)} evaluation images were in its training set): pick "
                          f"held-out images (its metadata lists the training indices) or pass --force / "
                          f"allow_train_overlap=True")


# ---------------------------------------------------------------- generators
def save_generator(path: str | Path, generator: nn.Module, *, provenance: Provenance | None = None,
                   steps: int = 0, extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Save a :class:`DCGAN` / :class:`DeepImagePrior` with its constructor arguments and provenance."""
    prov = provenance or Provenance()
    cfg = generator.config()
    meta = {"format": FORMAT, "version": 1, "kind": generator.kind, "kwargs": cfg,
            "image_shape": [cfg["channels"], *cfg["image_size"]], "latent_dim": cfg.get("latent_dim"),
            "training_steps": int(steps), "training": prov.to_dict(), "extra": extra or {}}
    tensors = dict(generator.state_dict())
    return save_checked(path, tensors, meta)


@dataclass
class LoadedGenerator:
    module: nn.Module
    meta: dict[str, Any]
    #: None for a verified checkpoint (or a factory), else what was not verified (``allow_legacy``)
    legacy: str | None = None

    @property
    def latent_dim(self) -> int | None:
        return self.meta.get("latent_dim")


def read_generator_meta(path: str | Path, *, allow_legacy: bool = False) -> dict[str, Any]:
    """The checkpoint's JSON metadata, verified with its tensors (the held-out check relies on its provenance)."""
    return load_checked(path, FORMAT, allow_legacy=allow_legacy).meta


def is_generator_factory(spec: str | Path) -> bool:
    """True when ``spec`` names a ``package.module:factory`` rather than a checkpoint on disk."""
    text = str(spec)
    return is_code_reference(text) and not _base(text).with_suffix(".json").exists() and not Path(text).exists()


def load_generator(spec: str | Path, device: str | torch.device = "cpu", *, trust_code: bool = False,
                   allow_legacy: bool = False) -> LoadedGenerator:
    """Load a generator: a checkpoint path (NAME, NAME.json or NAME.safetensors) or ``package.module:factory``.

    A factory must return an ``nn.Module`` mapping latents ``[N, latent_dim]`` to images ``[N, C, H, W]`` in
    [-1, 1] and expose ``latent_dim`` (how user-supplied weights such as a StyleGAN are plugged in); its
    provenance is unknown, so the held-out check refuses it unless forced. A factory is code: it is imported
    only with ``trust_code=True`` (``--trust-model-code``; :mod:`gradaudit.trust`). ``allow_legacy`` reads a
    checkpoint whose checksum does not cover its metadata (see :mod:`gradaudit.checked_files`).
    """
    text = str(spec)
    base = _base(text)
    if is_generator_factory(text):
        factory = load_code_reference(text, "generator", trust_code)
        module = factory()
        if not isinstance(module, nn.Module) or not hasattr(module, "latent_dim"):
            raise ConfigError(f"generator factory '{text}' must return an nn.Module with a latent_dim attribute")
        meta = {"format": FORMAT, "kind": "factory", "factory": text, "latent_dim": int(module.latent_dim),
                "training": None}
        return LoadedGenerator(module.to(device).eval(), meta)
    pair = load_checked(text, FORMAT, allow_legacy=allow_legacy)
    tensors, meta = pair.tensors, pair.meta
    try:
        module = build_generator(meta["kind"], **meta["kwargs"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{base}: metadata does not describe a generator ({type(e).__name__}: {e})") from None
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{base}: tensors do not fit a {meta['kind']} with {meta['kwargs']}: {e}") from None
    return LoadedGenerator(module.to(device).eval(), meta, legacy=pair.legacy)
