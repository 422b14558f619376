"""Write an audit's results to its output folder, losing nothing.

For each run: ``grid.png`` (ground truth above each reconstruction, one column per image, PSNR under each),
``metrics.json`` (every score per image and on average, timings, label recovery, LPIPS status),
``config.yaml`` (the resolved configuration), ``reconstructions.safetensors`` (the reconstructed images
and labels, aligned to the ground truth) and the observation the attack saw (``observation*.safetensors`` +
``.json``), so the attack can be re-run with ``gradaudit attack --observation``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from ..attacks.base import Reconstruction
from ..data.image_grid import save_reconstruction_grid
from ..evaluation.records import aligned_images, json_ready, reconstruction_record, result_record, summarize


def write_results(out: str | Path, results: Sequence, *, labels: Sequence[str] | None = None,
                  save_observations: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write the grid, metrics.json, config.yaml, reconstructions and observations of ``results``.

    Runs that share a label form one row of the grid (their images side by side, in run order); the
    ground-truth row shows the private images of the first label's runs.
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = list(labels) if labels is not None else [", ".join(r.defenses) or "no defense" for r in results]
    groups: dict[str, list] = {}
    for label, r in zip(labels, results):
        groups.setdefault(label, []).append(r)
    paths: dict[str, Path] = {}

    rows: list = []
    first = next(iter(groups.values()))
    if all(r.truth is not None for r in first):
        rows.append(("ground truth", torch.cat([r.truth for r in first]), None))
    for label, group in groups.items():
        caps = None if any(r.scores is None for r in group) else [f"{p:.1f} dB" for r in group for p in r.scores.psnr]
        rows.append((label, torch.cat([aligned_images(r) for r in group]), caps))
    paths["grid"] = save_reconstruction_grid(rows, out / "grid.png")

    record = {"summary": json_ready([summarize(label, group) for label, group in groups.items()]),
              "runs": [dict(label=l, **result_record(r)) for l, r in zip(labels, results)]}
    if extra:
        record.update(json_ready(extra))
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    paths["metrics"] = out / "metrics.json"

    configs = [r.config.model_dump() for r in results]
    (out / "config.yaml").write_text(yaml.safe_dump(configs[0] if len(configs) == 1 else {"runs": configs},
                                                    sort_keys=False))
    paths["config"] = out / "config.yaml"

    tensors = {}
    for i, r in enumerate(results):
        tensors[f"run{i}/images"] = aligned_images(r).contiguous()
        if r.reconstruction.labels is not None:
            tensors[f"run{i}/labels"] = r.reconstruction.labels.to(torch.int64).contiguous()
    save_file(tensors, str(out / "reconstructions.safetensors"), metadata={"labels": json.dumps(labels)})
    paths["reconstructions"] = out / "reconstructions.safetensors"

    if save_observations:
        obs_dir = out if len(results) == 1 else out / "observations"
        for i, r in enumerate(results):
            stem = "observation" if len(results) == 1 else f"run{i}"
            paths["observation" if len(results) == 1 else "observations"], _ = r.observation.save(obs_dir / stem)
        if len(results) > 1:
            paths["observations"] = obs_dir
    return paths


def write_captured(out: str | Path, observation: str | Path, rec: Reconstruction, config,
                   legacy: str | None = None, fit=None) -> dict[str, Path]:
    """The run folder of an attack on a captured observation: grid.png (the reconstruction), metrics.json
    (unscored: there is no ground truth; ``fit``, an :class:`~gradaudit.evaluation.fit.UpdateFit`, is recorded),
    config.yaml and reconstructions.safetensors."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"grid": save_reconstruction_grid([("reconstruction", rec.images, None)], out / "grid.png")}
    record = {"observation": str(observation), "ground_truth": None, "scores": None,
              "reconstruction": reconstruction_record(rec), "fit": None if fit is None else fit.to_dict()}
    if legacy:
        record["observation_integrity"] = legacy
    (out / "metrics.json").write_text(json.dumps(json_ready(record), indent=2, default=str))
    paths["metrics"] = out / "metrics.json"
    (out / "config.yaml").write_text(config.to_yaml())
    paths["config"] = out / "config.yaml"
    tensors = {"images": rec.images.contiguous()}
    if rec.labels is not None:
        tensors["labels"] = rec.labels.to("cpu").long().contiguous()
    save_file(tensors, str(out / "reconstructions.safetensors"))
    paths["reconstructions"] = out / "reconstructions.safetensors"
    return paths
