"""Cost and quality of the analytic and feature attacks (CPU, one thread).

1. Tensor-based feature reconstruction (Wang, Lee, Lei 2023) on the synthetic two-layer head, d = 20 (and a
   wider d = 256 row): seconds per reconstruction and per-feature / span error, versus the width m and B.
2. Robbing the Fed: 64 embedded photos through ``imprint`` (K = 128 bins) on a LeNet: seconds, samples
   recovered at > 40 dB (order-free, and after the MSE assignment of ``score_reconstruction``), median PSNR.
3. Cocktail Party Attack: 32 embedded photos through the MLP (width 256): seconds, fraction at PSNR >= 15 dB
   or SSIM >= 0.5, median PSNR.

Run:  .venv/bin/python benchmarks/analytic_attacks.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gradaudit.attacks.analytic import RobbingTheFed
from gradaudit.attacks.features import CocktailPartyAttack
from gradaudit.attacks.features.tensor import (feature_matching_error, feature_reconstruction_error,
                                               reconstruct_features, synthetic_two_layer)
from gradaudit.data import load_dataset
from gradaudit.metrics import psnr, score_reconstruction
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec


def tensor_table(seeds: int) -> None:
    print("Tensor feature reconstruction, synthetic head (seconds / per-feature error / span error, "
          f"mean of {seeds} seeds)")
    for d, widths, batches in ((20, (1000, 4000, 16000, 64000), (2, 4, 8, 16)), (256, (4000, 16000), (8, 32))):
        print(f"  d = {d}")
        print("    " + "m".ljust(8) + "".join(f"B={b}".ljust(26) for b in batches))
        for m in widths:
            cells = []
            for b in batches:
                secs, match, span = [], [], []
                for seed in range(seeds):
                    obs = synthetic_two_layer(d, b, m, seed=seed)
                    rec = reconstruct_features(obs["weights"], obs["gradients"], obs["head"], b, seed=seed)
                    secs.append(rec.seconds)
                    match.append(feature_matching_error(obs["features"], rec.features))
                    span.append(feature_reconstruction_error(obs["features"], rec.features))
                cells.append(f"{statistics.mean(secs):6.3f}s {statistics.mean(match):.3f} "
                             f"{statistics.mean(span):.0e}".ljust(26))
            print("    " + str(m).ljust(8) + "".join(cells))


def _observe(data, indices, name, kwargs):
    images, labels = data.batch(indices)
    spec = ModelSpec(name, data.num_classes, data.shape, kwargs)
    torch.manual_seed(0)
    model = build_model(spec)
    t = time.perf_counter()
    obs = Client(model, spec, DataSpec(data.name, data.mean, data.std)).share(images, labels)
    return obs, images, time.perf_counter() - t


def robbing_the_fed(data) -> None:
    obs, images, share_s = _observe(data, list(range(64)), "imprint", {"base": "lenet", "bins": 128})
    rec = RobbingTheFed().reconstruct(obs)
    scores = score_reconstruction(rec.images, images)
    best = torch.stack([psnr(rec.images, img.expand_as(rec.images)).max() for img in images])
    print(f"Robbing the Fed, 64 embedded photos, imprint(lenet, K=128): client {share_s:.2f} s, attack "
          f"{rec.seconds:.3f} s; {int((best > 40).sum())}/64 recovered at > 40 dB "
          f"({sum(p > 40 for p in scores.psnr)} after the MSE assignment), median PSNR "
          f"{statistics.median(scores.psnr):.1f} dB; {rec.config['bins_nonempty']} non-empty bins, "
          f"{rec.config['bins_consistent']} consistent")


def cocktail_party(data, seeds: int) -> None:
    for seed in range(seeds):
        idx = torch.randperm(64, generator=torch.Generator().manual_seed(seed))[:32].tolist()
        obs, images, _ = _observe(data, idx, "mlp", {"width": 256})
        rec = CocktailPartyAttack().reconstruct(obs)
        s = score_reconstruction(rec.images, images)
        good = sum((p >= 15 or q >= 0.5) for p, q in zip(s.psnr, s.ssim)) / 32
        print(f"CPA, 32 embedded photos (batch seed {seed}), MLP-256, {rec.iterations} Adam steps: "
              f"{rec.seconds:.1f} s; "
              f"{sum(p >= 15 for p in s.psnr) / 32:.2f} at PSNR >= 15 dB, {good:.2f} at PSNR >= 15 or SSIM >= 0.5, "
              f"median PSNR {statistics.median(s.psnr):.1f} dB, best {max(s.psnr):.1f} dB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tensor_table(args.seeds)
    data = load_dataset("embedded")
    robbing_the_fed(data)
    cocktail_party(data, args.seeds)


if __name__ == "__main__":
    main()
