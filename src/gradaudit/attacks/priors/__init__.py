"""Generative image priors for gradient inversion (seed 001: GI-z, GI-w, GIAS, GIML; seed 002: deep image prior).

* :mod:`.generators` - the DCGAN generator/critic and the U-Net deep image prior.
* :mod:`.checkpoint` - checksummed safetensors + JSON checkpoints and the held-out check.
* :mod:`.parameterization` / :mod:`.attack` - the matching engine over P(theta) (presets ``gi-z``, ``gi-w``,
  ``gias``, ``dip`` of :mod:`gradaudit.attacks.matching.presets`).
* :mod:`.training` - ``gradaudit prior train``: DCGAN training with resume.
* :mod:`.giml` - ``gradaudit prior meta-learn``: a prior learned from gradients only (Reptile).
"""

from .checkpoint import (CheckpointError, Provenance, check_held_out, load_generator, read_generator_meta,
                         save_generator)
from .generators import DCGAN, DCGANDiscriminator, DeepImagePrior, build_generator, calibrate_batchnorm, to_pixels

__all__ = ["DCGAN", "DCGANDiscriminator", "DeepImagePrior", "build_generator", "calibrate_batchnorm", "to_pixels",
           "CheckpointError", "Provenance", "check_held_out", "load_generator", "read_generator_meta",
           "save_generator", "check_attack_held_out"]


def check_attack_held_out(attack, dataset: str, indices, split: str = "train", labels=None) -> None:
    """Held-out check for an attack built by :func:`gradaudit.attacks.build_attack`, where the evaluation
    images are known (the run's dataset, split and indices); a no-op for attacks without a generator."""
    cfg = getattr(attack, "config", None)
    path = getattr(cfg, "generator", None)
    from .parameterization import PARAMETERIZATIONS

    kind = getattr(cfg, "parameterization", "pixels")
    if not path or not PARAMETERIZATIONS.get(kind, PARAMETERIZATIONS["pixels"]).needs_generator:
        return
    if cfg.allow_train_overlap:
        return
    from .checkpoint import is_generator_factory

    if is_generator_factory(path):
        meta = {"training": None}  # a module:factory generator has no recorded provenance
    else:
        meta = read_generator_meta(path, allow_legacy=getattr(attack, "allow_legacy", False))
    check_held_out(meta, dataset, list(indices), split, labels=labels)
