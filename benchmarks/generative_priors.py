"""Generative image priors versus pixel-space inversion at an equal wall-clock budget (seed 001; CPU, one thread).

Tables printed:

1. Quality: held-out Fashion-MNIST (test split; the prior was trained on the train split) and the held-out
   photos of the embedded set (photos 2 "chelsea" and 5 "china", whose crops the prior never saw), B = 1 and
   B = 4, ``--n`` batches per cell, LeNet at its seeded initialisation, FedSGD, labels granted (so the table
   compares image priors, not label recovery). Every attack gets the same wall-clock budget (``--budget``
   seconds per batch): its iteration count is set from a calibration run (ms per iteration and set-up time
   measured on the spot, under the current load). GIAS spends half the budget on the latent search and half
   on the per-image generator copies. Attacks: GI-x (inverting-gradients), GI-z, GI-w, GIAS, DIP, and GIAS
   with the GIML prior (meta-learned from gradients only). Mean PSNR (dB) / SSIM after the order-free
   assignment of :func:`gradaudit.metrics.score_reconstruction`.
2. Defenses on Fashion-MNIST: GI-x and GIAS through Gaussian noise (``noise:SIGMA``, the defense transform of
   :mod:`gradaudit.defenses`) and through a larger batch (B = 8).
3. Speed: ms per iteration of GIAS's per-image-copy phase at B = 1 and B = 4, of GI-x, and their ratio.

Run:  .venv/bin/python benchmarks/generative_priors.py [--budget 10 --n 2]
      (priors from ``gradaudit prior train`` / ``prior meta-learn``, paths below)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from gradaudit.attacks import build_attack
from gradaudit.attacks.priors import check_held_out, read_generator_meta
from gradaudit.data import load_dataset
from gradaudit.defenses import parse_defense
from gradaudit.metrics import score_reconstruction
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, ServerKnowledge

OUT = Path("gradaudit-out/priors")
ATTACKS = ("gi-x", "gi-z", "gi-w", "gias", "dip", "gias+giml")


def load() -> str:
    return open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"


class Cell:
    """One dataset at one batch size: the victim model, the evaluation batches, and calibrated attacks."""

    def __init__(self, name: str, ds, batches: list[list[int]], priors: dict[str, str], seed: int = 0,
                 defense: str | None = None) -> None:
        self.name, self.ds, self.batches, self.priors = name, ds, batches, priors
        self.spec = ModelSpec("lenet", ds.num_classes, ds.shape)
        torch.manual_seed(seed)
        self.model = build_model(self.spec)
        self.defense = defense
        self.calibration: dict[str, tuple[float, float]] = {}

    def observe(self, idx: list[int], seed: int):
        x, y = self.ds.batch(idx)
        transforms = [parse_defense(self.defense)] if self.defense else []
        client = Client(self.model, self.spec, DataSpec(self.ds.name, self.ds.mean, self.ds.std),
                        transforms=transforms, knowledge=ServerKnowledge(labels=True), seed=seed)
        return client.share(x, y), x, y

    def build(self, attack: str, iterations: int, latent_iterations: int = 0):
        if attack == "gi-x":
            return build_attack("inverting-gradients", iterations=iterations, tune="off")
        if attack == "dip":
            return build_attack("dip", iterations=iterations)
        prior = self.priors["giml" if attack == "gias+giml" else "dcgan"]
        if attack in ("gias", "gias+giml"):
            return build_attack("gias", generator=prior, iterations=iterations, latent_iterations=latent_iterations)
        return build_attack(attack, generator=prior, iterations=iterations)

    def _per_iteration(self, make, obs, k: int = 8) -> tuple[float, float]:
        """(seconds per iteration, set-up seconds) from runs of k and 2k iterations, after a warm-up run."""
        make(1).reconstruct(obs)  # first calls are slow (allocator, vmap tracing); not part of the estimate
        t = []
        for n in (k, 2 * k):
            t0 = time.perf_counter()
            make(n).reconstruct(obs)
            t.append(time.perf_counter() - t0)
        per = max((t[1] - t[0]) / k, 0.25 * t[1] / (2 * k))  # noisy under load: bounded below
        return per, max(t[0] - k * per, 0.0)

    def iterations(self, attack: str, budget: float, obs) -> tuple[int, int]:
        """(iterations, latent iterations) that fill ``budget`` seconds for this attack."""
        if attack in ("gias", "gias+giml"):
            if attack not in self.calibration:
                lat = self._per_iteration(lambda n: self.build(attack, 0, n), obs)
                cop = self._per_iteration(lambda n: self.build(attack, n, 0), obs)
                self.calibration[attack] = (lat, cop)
            (pl, sl), (pc, sc) = self.calibration[attack]
            half = max(budget - max(sl, sc), 0.5 * budget) / 2
            return max(8, int(half / pc)), max(8, int(half / pl))
        if attack not in self.calibration:
            self.calibration[attack] = self._per_iteration(lambda n: self.build(attack, n), obs)
        per, setup = self.calibration[attack]
        return max(8, int((budget - setup) / per)), 0


def run_cell(cell: Cell, attacks, budget: float) -> dict[str, dict]:
    rows = {}
    for attack in attacks:
        psnr, ssim, secs, its = [], [], [], None
        for b, idx in enumerate(cell.batches):
            obs, x, y = cell.observe(idx, seed=b)
            if its is None:
                its = cell.iterations(attack, budget, obs)
            rec = cell.build(attack, *its).reconstruct(obs)
            s = score_reconstruction(rec.images, x)
            psnr.append(s.mean_psnr)
            ssim.append(s.mean_ssim)
            secs.append(rec.seconds)
        rows[attack] = {"psnr": statistics.mean(psnr), "ssim": statistics.mean(ssim), "s": statistics.mean(secs),
                        "its": its}
        print(f"  {cell.name:14s} B={len(cell.batches[0])} {attack:10s} its={its[1]}+{its[0]:<4d} "
              f"{statistics.mean(secs):5.1f}s PSNR {statistics.mean(psnr):5.2f} SSIM {statistics.mean(ssim):.3f} "
              f"(load {load()})", flush=True)
    return rows


def held_out_batches(name: str, ds, prior: str, pool: list[int], B: int, n: int, split: str) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    order = [pool[i] for i in torch.randperm(len(pool), generator=g).tolist()]
    batches = [order[i * B:(i + 1) * B] for i in range(n)]
    for path in prior.values() if isinstance(prior, dict) else [prior]:
        for idx in batches:
            check_held_out(read_generator_meta(path), name, idx, split)  # refuses a prior that saw them
    return batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=10.0, help="seconds per attack and batch")
    ap.add_argument("--n", type=int, default=2, help="batches per cell")
    ap.add_argument("--fmnist-prior", default=str(OUT / "fmnist/generator"))
    ap.add_argument("--fmnist-giml", default=str(OUT / "fmnist-giml/generator"))
    ap.add_argument("--embedded-prior", default=str(OUT / "embedded/generator"))
    ap.add_argument("--embedded-giml", default=str(OUT / "embedded-giml/generator"))
    ap.add_argument("--skip-defenses", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    print(f"load at start: {open('/proc/loadavg').read().strip()}")

    fm = load_dataset("fashion-mnist", split="test")
    emb = load_dataset("embedded")
    emb_pool = [i for i in range(len(emb)) if int(emb.labels[i]) in (2, 5)]  # held-out photos
    setups = [("fashion-mnist", fm, list(range(len(fm))), "test",
               {"dcgan": args.fmnist_prior, "giml": args.fmnist_giml}),
              ("embedded", emb, emb_pool, "train", {"dcgan": args.embedded_prior, "giml": args.embedded_giml})]
    results: dict[tuple[str, int], dict] = {}
    speed: dict[tuple[str, int], dict] = {}
    for name, ds, pool, split, priors in setups:
        for B in (1, 4):
            batches = held_out_batches(name, ds, priors, pool, B, args.n, split)
            cell = Cell(name, ds, batches, priors)
            results[(name, B)] = run_cell(cell, ATTACKS, args.budget)
            speed[(name, B)] = {"gi-x": cell.calibration["gi-x"][0], "gias": cell.calibration["gias"][1][0]}

    print(f"\n## Quality at an equal budget of {args.budget:.0f} s per batch ({args.n} batches per cell, held-out "
          f"images, LeNet, labels granted); PSNR dB / SSIM")
    print("| data | B | " + " | ".join(ATTACKS) + " |")
    print("|---|---|" + "---|" * len(ATTACKS))
    for (name, B), rows in results.items():
        print(f"| {name} | {B} | " + " | ".join(f"{rows[a]['psnr']:.2f} / {rows[a]['ssim']:.3f}" for a in ATTACKS)
              + " |")
    print("\niterations (latent + copies for GIAS) that filled the budget:")
    for (name, B), rows in results.items():
        print(f"  {name} B={B}: " + ", ".join(f"{a} {rows[a]['its'][1] + rows[a]['its'][0]}" for a in ATTACKS))

    if not args.skip_defenses:
        print("\n## Defenses (Fashion-MNIST, held-out test images)")
        print("| defense | B | GI-x PSNR / SSIM | GIAS PSNR / SSIM |")
        print("|---|---|---|---|")
        name, ds, pool, split, priors = setups[0]
        print("| none | 1 | (table above) | |")
        for defense, B in (("noise:0.001", 1), ("noise:0.01", 1), (None, 8)):
            batches = held_out_batches(name, ds, priors, pool, B, args.n, split)
            rows = run_cell(Cell(name, ds, batches, priors, defense=defense), ("gi-x", "gias"), args.budget)
            print(f"| {defense or 'none'} | {B} | {rows['gi-x']['psnr']:.2f} / {rows['gi-x']['ssim']:.3f} | "
                  f"{rows['gias']['psnr']:.2f} / {rows['gias']['ssim']:.3f} |", flush=True)

    print("\n## Speed (ms per iteration, one thread; GIAS = the per-image generator copies phase)")
    print("| data | B | GI-x | GIAS | GIAS / GI-x |")
    print("|---|---|---|---|---|")
    for (name, B), s in speed.items():
        print(f"| {name} | {B} | {1000 * s['gi-x']:.1f} | {1000 * s['gias']:.1f} | {s['gias'] / s['gi-x']:.1f} |")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; load at end: {open('/proc/loadavg').read().strip()}")


if __name__ == "__main__":
    main()
