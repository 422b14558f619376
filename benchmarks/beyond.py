"""Beyond the peers: the newer attacks, measured (CPU; the figures in the README come from this script).

1. SPEAR (Dimitrov et al. 2024) on the MLP's first layer (width 256, embedded photos 32x32, FedSGD, labels
   unknown): the share of batches recovered exactly (every image >= 60 dB) against the batch size, and the
   seconds it took, each batch with a wall-clock budget (``--spear-budget``, the issue's 10 minutes).
2. SPEAR at B = 8 under the defenses: Gaussian noise, pruning, clipping, DP-SGD (clip 1, sigma 0.01 / 1.1).
3. Trap weights vs Robbing the Fed's imprint at equal malicious neurons, and class fishing in a batch of 128
   (alone and through a secure aggregate of 4 clients): ``benchmarks/beyond_malicious.py``.
4. APRIL vs Inverting Gradients on the ViT at B = 1: ``benchmarks/beyond_april.py``.

Run:  .venv/bin/python benchmarks/beyond.py --part spear [--batches 5 --spear-budget 600]
      .venv/bin/python benchmarks/beyond.py --part defenses | malicious | april | all
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from gradaudit.attacks.registry import build_attack
from gradaudit.data import load_dataset
from gradaudit.defenses.registry import parse_defense
from gradaudit.metrics import psnr
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, ServerKnowledge

sys.path.insert(0, str(Path(__file__).parent))

EXACT_DB = 60.0


def _observe(data, indices: list[int], defenses: tuple[str, ...] = (), seed: int = 0):
    images, labels = data.batch(indices)
    spec = ModelSpec("mlp", data.num_classes, data.shape, {})
    torch.manual_seed(seed)
    model = build_model(spec)
    client = Client(model, spec, DataSpec(data.name, data.mean, data.std),
                    transforms=[parse_defense(d) for d in defenses], knowledge=ServerKnowledge(labels=False),
                    seed=seed)
    return client.share(images, labels), images


def _best_psnr(rec: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """For every private image, the PSNR of the reconstruction closest to it (order-free)."""
    return torch.stack([psnr(rec, img.expand_as(rec)).max() for img in images])


def _spear_trial(data, b: int, batch_seed: int, trial: int, defenses: tuple[str, ...], budget: float):
    """One random batch of ``b`` photos (drawn with ``batch_seed``) through SPEAR: (reconstruction, each private
    image's best PSNR, seconds)."""
    g = torch.Generator().manual_seed(batch_seed)
    idx = torch.randperm(len(data), generator=g)[:b].tolist()
    obs, images = _observe(data, idx, defenses, seed=trial)
    t0 = time.perf_counter()
    rec = build_attack("spear", time_budget=budget, seed=trial).reconstruct(obs)
    seconds = time.perf_counter() - t0
    return rec, _best_psnr(rec.images, images), seconds


def spear_rows(sizes: list[int], batches: int, budget: float) -> list[dict]:
    data = load_dataset("embedded")
    rows = []
    for b in sizes:
        for trial in range(batches):
            rec, best, seconds = _spear_trial(data, b, 1000 * b + trial, trial, (), budget)
            rows.append({"B": b, "trial": trial, "exact": bool((best >= EXACT_DB).all()),
                         "min_psnr": float(best.min()), "seconds": seconds, "sets": rec.config["samples"],
                         "found": rec.config["directions"]})
            print(f"  B={b} trial {trial}: exact={rows[-1]['exact']} min {best.min():.1f} dB "
                  f"{seconds:.1f} s ({rec.config['samples']} sets)", flush=True)
    return rows


def spear_table(rows: list[dict]) -> str:
    out = ["| B | batches | exact (all >= 60 dB) | median seconds | max seconds | median min PSNR (dB) |",
           "|---|---|---|---|---|---|"]
    for b in sorted({r["B"] for r in rows}):
        rs = [r for r in rows if r["B"] == b]
        out.append(f"| {b} | {len(rs)} | {sum(r['exact'] for r in rs)}/{len(rs)} | "
                   f"{statistics.median(r['seconds'] for r in rs):.1f} | {max(r['seconds'] for r in rs):.1f} | "
                   f"{statistics.median(r['min_psnr'] for r in rs):.1f} |")
    return "\n".join(out)


DEFENSES = [(), ("noise:0.0001",), ("noise:0.001",), ("noise:0.01",), ("prune:0.5",), ("prune:0.9",),
            ("clip:1.0",), ("dpsgd:1.0,0.01",), ("dpsgd:1.0,1.1",)]


def defense_rows(b: int, batches: int, budget: float) -> list[dict]:
    data = load_dataset("embedded")
    rows = []
    for defenses in DEFENSES:
        for trial in range(batches):
            rec, best, seconds = _spear_trial(data, b, 77 * b + trial, trial, defenses, budget)
            rows.append({"defense": " + ".join(defenses) or "none", "trial": trial,
                         "exact": bool((best >= EXACT_DB).all()), "mean_psnr": float(best.mean()),
                         "above30": float((best > 30).float().mean()), "seconds": seconds,
                         "found": rec.config["directions"]})
            print(f"  {rows[-1]['defense']} trial {trial}: mean {best.mean():.1f} dB, "
                  f"{rows[-1]['above30']:.2f} > 30 dB, {rows[-1]['seconds']:.1f} s", flush=True)
    return rows


def defense_table(rows: list[dict], b: int) -> str:
    out = [f"| defense (B={b}) | batches exact | images > 30 dB | mean PSNR (dB) | median seconds |",
           "|---|---|---|---|---|"]
    for name in dict.fromkeys(r["defense"] for r in rows):
        rs = [r for r in rows if r["defense"] == name]
        out.append(f"| {name} | {sum(r['exact'] for r in rs)}/{len(rs)} | "
                   f"{statistics.mean(r['above30'] for r in rs):.2f} | {statistics.mean(r['mean_psnr'] for r in rs):.1f} | "
                   f"{statistics.median(r['seconds'] for r in rs):.1f} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["spear", "defenses", "malicious", "april", "all"], default="spear")
    parser.add_argument("--sizes", default="2,4,8,12,16,20,24")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--spear-budget", type=float, default=600.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("spear", "all"):
        rows = spear_rows([int(s) for s in args.sizes.split(",")], args.batches, args.spear_budget)
        print(spear_table(rows))
    if args.part in ("defenses", "all"):
        rows = defense_rows(8, args.batches, min(args.spear_budget, 60.0))
        print(defense_table(rows, 8))
    if args.part in ("malicious", "all"):
        import beyond_malicious

        print(beyond_malicious.trap_table(beyond_malicious.trap_vs_imprint(batch_sizes=(64,), trials=3)))
        print(beyond_malicious.fishing_table(beyond_malicious.fishing_trials(trials=20)))
    if args.part in ("april", "all"):
        import beyond_april

        print(beyond_april.table(beyond_april.april_vs_ig(images=8, ig_seconds=60.0)))


if __name__ == "__main__":
    main()
