"""Realistic FedAvg leakage: the attack that simulates the client's minibatch epochs (Dimitrov et al. 2022)
against the full-batch simplification, on the same FedAvg updates (CPU, one thread).

For each setting (N private images, minibatches of b, E local epochs, local lr) and each of ``--images``
class-balanced batches of embedded photos, one client update is captured from a ConvNet without batch norm
(fresh, or trained a few epochs on other images with ``--trained``); ``fedavg-leakage`` and
``inverting-gradients`` (which assumes K full-batch steps) attack that update with the same iteration count and
seed. Reported: mean PSNR / SSIM over all images of all batches, the gain in dB, and on how many batches the
FedAvg-aware attack scores higher.

Run:  .venv/bin/python benchmarks/fedavg_leakage.py [--images 6] [--iterations 200] [--trained]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gradaudit.attacks import build_attack
from gradaudit.data import load_dataset
from gradaudit.data.sampling import class_spread
from gradaudit.evaluation.victims import train_victim
from gradaudit.metrics import score_reconstruction
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, ServerKnowledge

SETTINGS = ((4, 2, 1, 0.05), (4, 2, 2, 0.05), (4, 1, 1, 0.05), (8, 4, 2, 0.05))
ATTACKS = ("fedavg-leakage", "inverting-gradients")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=6, help="batches per setting")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--trained", action="store_true", help="attack a victim trained 8 epochs on other images")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset("embedded")
    kw = {"norm": "none"}
    spec = ModelSpec("convnet", ds.num_classes, ds.shape, kw)
    data = DataSpec("embedded", tuple(ds.mean), tuple(ds.std))
    half = sorted(class_spread(ds.labels, len(ds) // 2, seed=0))
    private = [i for i in range(len(ds)) if i not in set(half)]
    state = None
    if args.trained:
        net, summary = train_victim("embedded", "convnet", epochs=8, model_kwargs=kw, indices=half)
        state = net.state_dict()
        print(f"victim trained on {len(half)} other images: accuracy {summary.final_accuracy:.2f}")
    print("| N | b | E | K | FedAvg-aware PSNR / SSIM | full-batch PSNR / SSIM | gain (dB) | wins | s per attack |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    labels = ds.labels[torch.as_tensor(private)]
    for n, b, e, lr in SETTINGS:
        scores = {a: ([], []) for a in ATTACKS}
        wins, secs = 0, []
        for seed in range(args.images):
            idx = [private[i] for i in class_spread(labels, n, seed=seed)]
            x, y = ds.batch(idx)
            torch.manual_seed(seed)
            model = build_model(spec)
            if state is not None:
                model.load_state_dict(state)
            client = Client(model, spec, data, protocol="fedavg", local_steps=1, local_lr=lr, local_epochs=e,
                            local_batch_size=b, knowledge=ServerKnowledge(labels=True), seed=seed)
            obs = client.share(x, y)
            means = {}
            for a in ATTACKS:
                t = time.perf_counter()
                rec = build_attack(a, seed=0, iterations=args.iterations).reconstruct(obs)
                secs.append(time.perf_counter() - t)
                s = score_reconstruction(rec.images, x)
                scores[a][0].extend(s.psnr)
                scores[a][1].extend(s.ssim)
                means[a] = s.mean_psnr
            wins += means[ATTACKS[0]] > means[ATTACKS[1]]
        m = {a: (statistics.mean(p), statistics.mean(q)) for a, (p, q) in scores.items()}
        k = obs.local_training.total_steps(n)
        print(f"| {n} | {b} | {e} | {k} | {m[ATTACKS[0]][0]:.2f} / {m[ATTACKS[0]][1]:.3f} | "
              f"{m[ATTACKS[1]][0]:.2f} / {m[ATTACKS[1]][1]:.3f} | {m[ATTACKS[0]][0] - m[ATTACKS[1]][0]:+.2f} | "
              f"{wins}/{args.images} | {statistics.mean(secs):.0f} |", flush=True)


if __name__ == "__main__":
    main()
