"""APRIL versus Inverting Gradients on a small Vision Transformer (CPU, one thread).

For ``images`` embedded photos (32x32, chosen by a seeded permutation), each alone (B = 1, labels known) on the
ViT (:class:`gradaudit.models.vit.VisionTransformer`: patch 4, dim 96, depth 4, built with the seed), the same
FedSGD observation is attacked by

* ``april``: the closed form through the position embedding's gradient (Lu et al., CVPR 2022): solve
  G^T P = dL/dE for the patches P, G = dL/dpos of the patch tokens (:mod:`gradaudit.attacks.analytic.april`);
* ``inverting-gradients``: the gradient-matching preset (Geiping et al., NeurIPS 2020) with its default
  self-tuning, stopped by a wall-clock ``time_budget`` of ``ig_seconds``.

Each reconstruction is scored with :func:`gradaudit.metrics.score_reconstruction` (PSNR, SSIM). The wall-clock
budget makes the Inverting Gradients row depend on the machine's load.

Run:  .venv/bin/python benchmarks/beyond_april.py [--images 8] [--ig-seconds 60]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gradaudit.attacks.registry import build_attack
from gradaudit.data import load_dataset
from gradaudit.metrics import score_reconstruction
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec

ATTACKS = ("april", "inverting-gradients")


def april_vs_ig(images: int = 8, ig_seconds: float = 60.0, seed: int = 0) -> list[dict]:
    """Run APRIL and Inverting Gradients (``time_budget=ig_seconds``) on ``images`` photos, one at a time.

    Returns one row per (image, attack): ``{"image": dataset index, "attack": name, "psnr": dB, "ssim": ...,
    "seconds": wall-clock of the attack}``.
    """
    data = load_dataset("embedded")
    if not 1 <= images <= len(data):
        raise ValueError(f"images must be between 1 and {len(data)}, got {images}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:images].tolist()
    spec = ModelSpec("vit", data.num_classes, data.shape, {})
    torch.manual_seed(seed)
    model = build_model(spec)
    client = Client(model, spec, DataSpec(data.name, data.mean, data.std))
    rows: list[dict] = []
    for index in order:
        truth, labels = data.batch([index])
        obs = client.share(truth, labels)
        for name in ATTACKS:
            kwargs = {"time_budget": ig_seconds} if name == "inverting-gradients" else {}
            attack = build_attack(name, seed=seed, **kwargs)
            t0 = time.perf_counter()
            rec = attack.reconstruct(obs)
            seconds = time.perf_counter() - t0
            scores = score_reconstruction(rec.images, truth)
            rows.append({"image": index, "attack": name, "psnr": float(scores.psnr[0]),
                         "ssim": float(scores.ssim[0]), "seconds": seconds})
            print(f"  photo {index:2d}  {name:20s} {rows[-1]['psnr']:6.1f} dB  SSIM {rows[-1]['ssim']:.3f}  "
                  f"{seconds:6.2f} s", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table: per attack, mean and min PSNR, mean SSIM, mean seconds."""
    lines = ["| attack | images | mean PSNR (dB) | min PSNR (dB) | mean SSIM | mean seconds |",
             "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["attack"] for r in rows):
        sel = [r for r in rows if r["attack"] == name]
        lines.append(f"| {name} | {len(sel)} | {statistics.mean(r['psnr'] for r in sel):.1f} | "
                     f"{min(r['psnr'] for r in sel):.1f} | {statistics.mean(r['ssim'] for r in sel):.3f} | "
                     f"{statistics.mean(r['seconds'] for r in sel):.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--ig-seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = april_vs_ig(args.images, args.ig_seconds, args.seed)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
