"""A finished attack run as plain, JSON-ready records (what a results store row and ``metrics.json`` hold)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from ..attacks.base import Reconstruction


def json_ready(o: Any) -> Any:
    """``o`` with non-finite floats as None, numpy scalars and tensors as plain Python, bytes summarised."""
    import numpy as np

    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): json_ready(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_ready(v) for v in o]
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return json_ready(o.item())
    if isinstance(o, torch.Tensor):
        return json_ready(o.tolist())
    if isinstance(o, bytes):
        return f"<{len(o)} bytes>"
    return o


def reconstruction_record(rec: Reconstruction) -> dict[str, Any]:
    return {"attack": rec.attack, "matching_loss": rec.matching_loss, "restart_losses": rec.restart_losses,
            "iterations": rec.iterations, "seconds": rec.seconds, "label_source": rec.label_source,
            "labels": None if rec.labels is None else rec.labels.tolist(), "history": rec.history,
            "hyperparameters": rec.config}


def _attack_threat(name: str) -> dict[str, Any] | None:
    from ..attacks.registry import attack_threat
    from ..errors import ConfigError

    try:
        return attack_threat(name).to_dict()
    except ConfigError:  # an attack built outside the registry (a user's subclass): nothing declared
        return None


def result_record(result) -> dict[str, Any]:
    """Everything measured in one AuditResult, JSON-ready (NaN/inf become null)."""
    return json_ready({
        "defenses": result.defenses,
        "threat_model": result.observation.threat_model.to_dict(),
        "attack_threat": _attack_threat(result.reconstruction.attack),
        "batch_size": result.observation.batch_size,
        "true_labels": None if result.true_labels is None else result.true_labels.tolist(),
        "scores": None if result.scores is None else result.scores.to_dict(),
        "reconstruction": reconstruction_record(result.reconstruction),
        "timings": result.timings,
        "config": result.config.model_dump(),
        "tuning": getattr(result, "tuning", None),
        "fit": None if getattr(result, "fit", None) is None else result.fit.to_dict(),
    })


def aligned_images(result) -> torch.Tensor:
    rec = result.reconstruction.images
    if result.scores is None:
        return rec
    return rec[torch.as_tensor(result.scores.assignment)]


def summarize(label: str, results: Sequence) -> dict[str, Any]:
    """Mean scores of the runs that share a label (one row of the summary table)."""
    def mean(values):
        values = [v for v in values if v is not None and math.isfinite(v)]
        return sum(values) / len(values) if values else None

    scored = [r for r in results if r.scores is not None]
    return {
        "label": label,
        "defense": ", ".join(results[0].defenses) or "none",
        "attack": results[0].reconstruction.attack,
        "B": results[0].observation.batch_size,
        "runs": len(results),
        "images": sum(r.observation.batch_size for r in results),
        "psnr": mean([p for r in scored for p in r.scores.psnr]),
        "ssim": mean([p for r in scored for p in r.scores.ssim]),
        "label_acc": mean([r.scores.label_accuracy for r in scored]),
        "seconds": sum(r.reconstruction.seconds for r in results),
        "underfit": sum(1 for r in results if getattr(r, "fit", None) is not None and r.fit.underfit),
        "recovered_nothing": sum(1 for r in results if getattr(r, "fit", None) is not None
                                 and r.fit.recovered_nothing),
    }


__all__ = ["aligned_images", "json_ready", "reconstruction_record", "result_record", "summarize"]
