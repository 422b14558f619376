"""Beyond the peers: malicious-server attacks that read samples out of a changed model (CPU, one thread).

1. ``trap_vs_imprint``: trap weights (Boenisch et al., EuroS&P 2023; ``trap-weights``, rate 1/B) versus Robbing
   the Fed's imprint (Fowl et al., ICLR 2022; ``imprint``, random-linear measurement, prior N(0, 1)) with the same
   number K of malicious neurons (trap rows / imprint bins), the same base network and the same batches: the
   fraction of the batch recovered at > 30 dB, order-free (a private image counts when some reconstruction
   matches it at > 30 dB), and the attack's seconds. For reference: the trap rows' ground truth (samples some row
   fires for alone: what any read-out of these rows can reach), the expectation if the rows fired independently
   with probability r, 1 - (1 - r (1 - r)^(B-1))^K, and the imprint's if the bins were exactly equal-mass,
   (1 - 1/K)^(B-1).
2. ``fishing_trials``: class fishing (Wen et al., ICML 2022; ``fishing``) read out with the imprint block. Per
   trial: a random batch (with 4 clients, 4 random batches of B/4 securely aggregated), a target = a random
   sample of the batch, whose class the server fishes; the bins use the prior of that class measured on public
   images of it outside the batch. Success: the target recovered at > 30 dB. Also reported: n_t (exact?), the
   fraction of fished samples recovered, fishing with the whole data's prior N(0, 1), and Robbing the Fed alone
   (no fishing, same bins, prior N(0, 1)) on the same batch.

Data: the embedded photos (8 photos x 8 crops, 32x32) under the 8 symmetries of the square (mirror images,
rotations, transposes): 512 distinct images, 64 per class (a class is one photo). No downloaded data set is
needed, but one class's images are crops of one photo: more alike than a CIFAR class.

Run:  .venv/bin/python benchmarks/beyond_malicious.py [--which trap fishing] [--trials 3] [--fishing-trials 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gradaudit.attacks.analytic import Fishing, RobbingTheFed, TrapWeights
from gradaudit.data import load_dataset
from gradaudit.metrics import psnr
from gradaudit.models import ModelSpec, build_model
from gradaudit.models.malicious import measurement_prior
from gradaudit.threat import Client, DataSpec
from gradaudit.threat.aggregation import aggregate

BASE = "lenet"


def dihedral_photos():
    """(dataset, images [512, 3, 32, 32] in [0, 1], labels [512]): the 64 embedded photos under the 8 symmetries
    of the square."""
    data = load_dataset("embedded")
    x, y = data.batch(list(range(len(data))))
    views = []
    for t in (x, x.transpose(-1, -2)):
        views += [t, t.flip(-1), t.flip(-2), t.flip(-1).flip(-2)]
    return data, torch.cat(views), y.repeat(len(views))


def best_psnr(reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """For each private image, the PSNR of the reconstruction that matches it best (order-free), [n]."""
    if images.numel() == 0:
        return torch.zeros(0)
    return torch.stack([psnr(reconstruction, img.expand_as(reconstruction)).max() for img in images])


def _share(data, spec: ModelSpec, batches: list[tuple[torch.Tensor, torch.Tensor]]):
    """The server's observation of the clients' batches (one batch: that client's update; several: their secure
    aggregate), for the model of ``spec`` built with seed 0."""
    torch.manual_seed(0)
    model = build_model(spec)
    dspec = DataSpec(data.name, data.mean, data.std)
    obs = [Client(model, spec, dspec).share(x, y) for x, y in batches]
    return obs[0] if len(obs) == 1 else aggregate(obs)


def trap_vs_imprint(batch_sizes=(64, 128, 256), neurons=(128, 256, 512, 1024), trials: int = 3) -> list[dict]:
    """Fraction of the batch recovered > 30 dB and attack seconds, trap weights vs imprint, per (B, K)."""
    data, images, labels = dihedral_photos()
    rows = []
    for b in batch_sizes:
        for k in neurons:
            frac = {"trap": [], "imprint": []}
            secs = {"trap": [], "imprint": []}
            confirmed, isolated = [], []
            for trial in range(trials):
                idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(1000 * b + trial))[:b]
                batch = [(images[idx], labels[idx])]
                trap = ModelSpec("trap-weights", data.num_classes, data.shape,
                                 {"base": BASE, "neurons": k, "rate": 1.0 / b, "seed": trial})
                imprint = ModelSpec("imprint", data.num_classes, data.shape,
                                    {"base": BASE, "bins": k, "measurement": "random-linear", "seed": trial})
                for name, spec, attack in (("trap", trap, TrapWeights()), ("imprint", imprint, RobbingTheFed())):
                    rec = attack.reconstruct(_share(data, spec, batch))
                    frac[name].append(float((best_psnr(rec.images, images[idx]) > 30).float().mean()))
                    secs[name].append(rec.seconds)
                    if name == "trap":
                        confirmed.append(rec.config["confirmed"] / b)
                        isolated.append(_isolated(spec, data.normalize(images[idx])) / b)
            r = 1.0 / b
            rows.append({"B": b, "K": k, "trap": statistics.mean(frac["trap"]),
                         "trap_isolated": statistics.mean(isolated),
                         "trap_independent": 1 - (1 - r * (1 - r) ** (b - 1)) ** k,
                         "imprint_uniform": (1 - 1 / k) ** (b - 1),
                         "trap_confirmed": statistics.mean(confirmed), "imprint": statistics.mean(frac["imprint"]),
                         "trap_s": statistics.mean(secs["trap"]), "imprint_s": statistics.mean(secs["imprint"]),
                         "trials": trials})
            print(f"  B={b} K={k}: trap {rows[-1]['trap']:.2f}, imprint {rows[-1]['imprint']:.2f}", flush=True)
    return rows


def _isolated(spec: ModelSpec, inputs: torch.Tensor) -> int:
    """Ground truth (the attacker cannot compute it): samples that some trap row fires for alone."""
    model = build_model(spec)
    with torch.no_grad():
        fires = model.trap(inputs.flatten(1)) > 0                    # [B, K]
    return int((fires & (fires.sum(0, keepdim=True) == 1)).any(1).sum())


def fishing_trials(batch_size: int = 128, clients=(1, 4), bins: int = 128, trials: int = 10) -> list[dict]:
    """Success rate (target > 30 dB) of class fishing, per number of clients, against Robbing the Fed alone."""
    data, images, labels = dihedral_photos()
    rows = []
    for n in clients:
        if batch_size % n:
            raise ValueError(f"batch_size {batch_size} is not divisible into {n} clients")
        hits = {"fishing": 0, "fishing_data_prior": 0, "imprint": 0}
        fished_frac = {"fishing": [], "fishing_data_prior": []}
        n_ts, exact_counts, secs = [], 0, []
        for trial in range(trials):
            g = torch.Generator().manual_seed(7919 * n + trial)
            idx = torch.randperm(len(images), generator=g)[:batch_size]
            target = int(idx[int(torch.randint(batch_size, (1,), generator=g))])
            t = int(labels[target])
            batches = [(images[idx[i::n]], labels[idx[i::n]]) for i in range(n)]
            x, y = images[idx], labels[idx]
            outside = torch.ones(len(images), dtype=torch.bool)
            outside[idx] = False
            mean, std = measurement_prior(data.normalize(images[outside & (labels == t)]), "random-linear", seed=0)
            common = {"base": BASE, "bins": bins, "target_class": t}
            specs = {"fishing": {**common, "prior_mean": mean, "prior_std": std}, "fishing_data_prior": common}
            fished = x[y == t]
            for name, kwargs in specs.items():
                rec = Fishing().reconstruct(_share(data, ModelSpec("fishing", data.num_classes, data.shape, kwargs),
                                                   batches))
                hits[name] += int(float(best_psnr(rec.images, images[target:target + 1])[0]) > 30)
                fished_frac[name].append(float((best_psnr(rec.images, fished) > 30).float().mean()))
                if name == "fishing":
                    n_ts.append(rec.config["fished"])
                    exact_counts += int(rec.config["fished"] == len(fished))
                    secs.append(rec.seconds)
            spec = ModelSpec("imprint", data.num_classes, data.shape,
                             {"base": BASE, "bins": bins, "measurement": "random-linear"})
            rec = RobbingTheFed().reconstruct(_share(data, spec, batches))
            hits["imprint"] += int(float(best_psnr(rec.images, images[target:target + 1])[0]) > 30)
        rows.append({"clients": n, "B": batch_size, "K": bins, "trials": trials,
                     "success": hits["fishing"] / trials, "success_data_prior": hits["fishing_data_prior"] / trials,
                     "imprint_success": hits["imprint"] / trials, "n_t_mean": statistics.mean(n_ts),
                     "n_t_range": (min(n_ts), max(n_ts)), "n_t_exact": exact_counts / trials,
                     "fished_recovered": statistics.mean(fished_frac["fishing"]),
                     "fished_recovered_data_prior": statistics.mean(fished_frac["fishing_data_prior"]),
                     "seconds": statistics.mean(secs)})
        print(f"  {n} client(s): success {rows[-1]['success']:.2f}", flush=True)
    return rows


def trap_table(rows: list[dict]) -> str:
    lines = ["| B | K (neurons = bins) | trap weights > 30 dB | trap confirmed | trap isolated (truth) | "
             "trap if rows were independent | imprint (RtF) > 30 dB | imprint if bins were uniform | trap s | "
             "imprint s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['B']} | {r['K']} | {r['trap']:.2f} | {r['trap_confirmed']:.2f} | "
                     f"{r['trap_isolated']:.2f} | {r['trap_independent']:.2f} | {r['imprint']:.2f} | "
                     f"{r['imprint_uniform']:.2f} | {r['trap_s']:.3f} | {r['imprint_s']:.3f} |")
    return "\n".join(lines)


def fishing_table(rows: list[dict]) -> str:
    lines = ["| clients | B | K | trials | target > 30 dB (fishing, class prior) | fishing, data prior | "
             "RtF alone | n_t mean [min, max] | n_t exact | fished samples > 30 dB (class prior / data prior) | "
             "attack s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['clients']} | {r['B']} | {r['K']} | {r['trials']} | {r['success']:.2f} | "
                     f"{r['success_data_prior']:.2f} | {r['imprint_success']:.2f} | {r['n_t_mean']:.1f} "
                     f"[{r['n_t_range'][0]}, {r['n_t_range'][1]}] | {r['n_t_exact']:.2f} | "
                     f"{r['fished_recovered']:.2f} / {r['fished_recovered_data_prior']:.2f} | {r['seconds']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--which", nargs="+", choices=("trap", "fishing"), default=["trap", "fishing"])
    parser.add_argument("--trials", type=int, default=3, help="batches per (B, K) cell of the trap table")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--neurons", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--fishing-trials", type=int, default=10)
    parser.add_argument("--fishing-batch", type=int, default=128)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--bins", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if "trap" in args.which:
        t0 = time.perf_counter()
        rows = trap_vs_imprint(tuple(args.batch_sizes), tuple(args.neurons), args.trials)
        print(f"\nTrap weights vs Robbing the Fed's imprint, base {BASE}, {args.trials} batches per cell "
              f"(fraction of the batch recovered > 30 dB, order-free; {time.perf_counter() - t0:.0f} s)\n")
        print(trap_table(rows) + "\n")
    if "fishing" in args.which:
        t0 = time.perf_counter()
        rows = fishing_trials(args.fishing_batch, tuple(args.clients), args.bins, args.fishing_trials)
        print(f"\nClass fishing, base {BASE}: a random target sample, its class fished "
              f"({time.perf_counter() - t0:.0f} s)\n")
        print(fishing_table(rows) + "\n")


if __name__ == "__main__":
    main()
