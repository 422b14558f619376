"""Never under-report: the tuned attack against the old fixed preset and the reference recipe, at equal wall time.

For every cell (victim, weights, dataset, batch size, protocol) and image, one FedSGD (or FedAvg) observation
with labels known is attacked three ways on the same gradient, one after another in this process:

(b) ``ig-reference`` - the reference framework's published Inverting Gradients recipe (cosine, TV 0.2,
    signed Adam 0.1, step decay), ``--iterations`` iterations; its wall time t_ref is the budget of the others;
(a) ``inverting-gradients --tune off`` - the old fixed preset (TV 1e-3), ``time_budget = t_ref``;
(c) ``inverting-gradients`` - the self-tuning attack (its default), ``time_budget = t_ref``.

Reported per cell: mean PSNR / SSIM of each, the PSNR of the random start and of a flat image of the data's
mean colour (what the server has without looking at the update), how far each attack fit the update (the share
of the way from a random guess to the private batch it closed, and how often it under-fit:
:mod:`gradaudit.evaluation.fit`), the tuner's selection regret
(the best candidate's PSNR minus the selected one's, both scored after the fact) and its winners.
``--cost`` measures instead what K = 8 candidates under successive halving cost against one attack of the
same iterations. Victims marked "trained" are trained first (``gradaudit victim train``: SGD, 8 epochs on
the dataset) and cached under ``--victims``.

    .venv/bin/python benchmarks/strongest_attack.py --out runs/strongest.jsonl            # every cell
    .venv/bin/python benchmarks/strongest_attack.py --cells resnet18-fresh-b1 --images 8
    .venv/bin/python benchmarks/strongest_attack.py --summary runs/strongest.jsonl         # the table
    .venv/bin/python benchmarks/strongest_attack.py --cost
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gradaudit.attacks import build_attack
from gradaudit.attacks.matching.engine import to_pixels
from gradaudit.data import load_dataset
from gradaudit.data.sampling import class_spread
from gradaudit.evaluation.cell import selection_regret
from gradaudit.evaluation.fit import UpdateFit, against_flat_image, flat_image_psnr, update_fit
from gradaudit.evaluation.victims import write_victim
from gradaudit.metrics import score_reconstruction
from gradaudit.models import ModelSpec, build_model
from gradaudit.models.weights import load_weights
from gradaudit.threat import Client, DataSpec, ServerKnowledge


@dataclass(frozen=True)
class Cell:
    name: str
    model: str
    kwargs: dict = field(default_factory=dict)
    trained: bool = False
    dataset: str = "embedded"
    batch: int = 1
    protocol: str = "fedsgd"
    image_size: int | None = None


CELLS = [
    Cell("lenet-fresh-b1", "lenet"),
    Cell("convnet-bn-fresh-b1", "convnet"),
    Cell("convnet-bn-fresh-b4", "convnet", batch=4),
    Cell("convnet-nobn-fresh-b1", "convnet", {"norm": "none"}),
    Cell("convnet-bn-trained-b1", "convnet", trained=True),
    Cell("convnet-nobn-fedavg-b4", "convnet", {"norm": "none"}, batch=4, protocol="fedavg"),
    Cell("resnet18-fresh-b1", "resnet18"),
    Cell("resnet18-fresh-b4", "resnet18", batch=4),
    Cell("resnet18-trained-b1", "resnet18", trained=True),
    Cell("resnet18-trained-b4", "resnet18", trained=True, batch=4),
    Cell("lenet-fresh-b1-lfw", "lenet", dataset="lfw", image_size=32),
    Cell("convnet-bn-fresh-b1-lfw", "convnet", dataset="lfw", image_size=32),
    Cell("resnet18-fresh-b1-lfw", "resnet18", dataset="lfw", image_size=32),
]


def pick_images(ds, n: int, seed: int) -> list[int]:
    """n indices spread over the classes (gradaudit.data.sampling.class_spread)."""
    return class_spread(ds.labels, n, seed)


def victim_weights(cell: Cell, folder: Path) -> Path | None:
    if not cell.trained:
        return None
    path = folder / f"{cell.model}-{cell.dataset}-{json.dumps(cell.kwargs, sort_keys=True)}.safetensors"
    if not path.is_file():
        write_victim(path, dataset=cell.dataset, model=cell.model, model_kwargs=cell.kwargs, epochs=8,
                     image_size=cell.image_size)
    return path


def observation(cell: Cell, ds, indices: list[int], weights: Path | None, seed: int):
    spec = ModelSpec(cell.model, ds.num_classes, ds.shape, cell.kwargs)
    torch.manual_seed(seed)
    net = build_model(spec)
    if weights is not None:
        load_weights(net, weights)
    images, labels = ds.batch(indices)
    extra = dict(local_steps=3, local_lr=0.01) if cell.protocol == "fedavg" else {}
    client = Client(net, spec, DataSpec(ds.name, ds.mean, ds.std), protocol=cell.protocol,
                    knowledge=ServerKnowledge(labels=True), **extra)
    return client.share(images, labels), images, labels


def random_start_psnr(obs, truth, seed: int) -> float:
    """PSNR of the attacks' starting point (a standard normal in the normalised space, clamped to the box)."""
    g = torch.Generator().manual_seed(seed)
    return float(score_reconstruction(to_pixels(torch.randn(truth.shape, generator=g), obs), truth).mean_psnr)


def run_cell(cell: Cell, args, out) -> None:
    ds = load_dataset(cell.dataset, image_size=cell.image_size)
    weights = victim_weights(cell, Path(args.victims))
    for n, index in enumerate(pick_images(ds, args.images, args.seed)):
        indices = [index] + ([] if cell.batch == 1 else pick_images(ds, cell.batch - 1, args.seed + 1000 + n))
        indices = list(dict.fromkeys(indices))[:cell.batch]
        obs, truth, labels = observation(cell, ds, indices, weights, args.seed)
        row = {"cell": cell.name, "image": index, "batch": cell.batch, "iterations_ref": args.iterations,
               "random_start_psnr": random_start_psnr(obs, truth, args.seed),
               "mean_colour_psnr": flat_image_psnr(obs, truth)}
        t0 = time.perf_counter()
        ref = build_attack("ig-reference", iterations=args.iterations, seed=args.seed).reconstruct(obs)
        budget = time.perf_counter() - t0
        runs = {"reference": ref,
                "fixed": build_attack("inverting-gradients", tune="off", time_budget=budget,
                                      seed=args.seed).reconstruct(obs),
                "tuned": build_attack("inverting-gradients", time_budget=budget, seed=args.seed).reconstruct(obs)}
        row["budget_s"] = budget
        for name, rec in runs.items():
            s = score_reconstruction(rec.images, truth, true_labels=labels, predicted_labels=rec.labels)
            row[f"{name}_psnr"], row[f"{name}_ssim"] = s.mean_psnr, s.mean_ssim
            row[f"{name}_iterations"], row[f"{name}_seconds"] = rec.iterations, rec.seconds
            fit = against_flat_image(update_fit(obs, rec.images, rec.labels, truth, labels), obs, truth, s.mean_psnr)
            row[f"{name}_fit"] = None if fit is None else fit.to_dict()
        tuned = runs["tuned"]
        regret = selection_regret(tuned, truth, row["tuned_psnr"])
        tuning = tuned.config["tuning"]
        row.update(regret_db=regret["regret_db"] if regret else None,
                   winner=tuning["candidates"][tuning["winner"]]["label"],
                   candidate_psnr=regret["candidate_psnr"] if regret else None)
        out.write(json.dumps(row) + "\n")
        out.flush()
        print(f"{cell.name} image {index}: ref {row['reference_psnr']:.2f} fixed {row['fixed_psnr']:.2f} "
              f"tuned {row['tuned_psnr']:.2f} dB (start {row['random_start_psnr']:.2f}, regret "
              f"{'-' if row['regret_db'] is None else format(row['regret_db'], '.2f')}, {row['winner']}, "
              f"{budget:.0f} s each)", flush=True)


def summary(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cells: dict[str, list[dict]] = {}
    for r in rows:
        cells.setdefault(r["cell"], []).append(r)
    print("| cell | n | start | mean colour | reference PSNR / SSIM | fixed preset | tuned | tuned - ref | "
          "regret median | time per attack |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, rs in cells.items():
        m = lambda k: statistics.mean(r.get(k, float("nan")) for r in rs)  # noqa: E731
        regrets = [r["regret_db"] for r in rs if r["regret_db"] is not None]
        print(f"| {name} | {len(rs)} | {m('random_start_psnr'):.1f} | {m('mean_colour_psnr'):.1f} | "
              f"{m('reference_psnr'):.2f} / "
              f"{m('reference_ssim'):.3f} | {m('fixed_psnr'):.2f} / {m('fixed_ssim'):.3f} | {m('tuned_psnr'):.2f} / "
              f"{m('tuned_ssim'):.3f} | {m('tuned_psnr') - m('reference_psnr'):+.2f} | "
              f"{statistics.median(regrets) if regrets else float('nan'):.2f} | {m('budget_s'):.0f} s |")
        below = sum(1 for r in rs if r["tuned_psnr"] < r["random_start_psnr"])
        if below:
            print(f"|   {name}: tuned below its random start on {below} of {len(rs)} images |")
        flat = {k: sum(1 for r in rs if r[f"{k}_psnr"] < r.get("mean_colour_psnr", float("-inf")))
                for k in ("reference", "fixed", "tuned")}
        if any(flat.values()):
            print(f"|   {name}: below the flat mean colour on " + ", ".join(f"{v} ({k})" for k, v in flat.items())
                  + f" of {len(rs)} images |")
        fits = {k: [(r[f"{k}_fit"], recovered_nothing(r, k)) for r in rs if r.get(f"{k}_fit")]
                for k in ("reference", "fixed", "tuned")}
        if any(fits.values()):  # gradaudit.evaluation.fit: share of the way from a random guess to the truth
            print(f"|   {name}: update fit closed (mean) / under-fit / fit and recovered nothing: " + ", ".join(
                f"{k} {statistics.mean(f['closed'] for f, _ in v if f['closed'] is not None):.0%} / "
                f"{sum(f['underfit'] for f, _ in v)} / {sum(b for _, b in v)} of {len(v)}"
                for k, v in fits.items() if v) + " |")


def recovered_nothing(row: dict, attack: str) -> bool:
    """The library's rule (gradaudit.evaluation.fit.UpdateFit.recovered_nothing) on a recorded row, also for
    rows recorded before the fit carried the PSNRs."""
    f = row[f"{attack}_fit"]
    return UpdateFit(f["reconstruction"], f["truth"], f["guess"], psnr=row[f"{attack}_psnr"],
                     flat_psnr=row["mean_colour_psnr"]).recovered_nothing


def cost(args) -> None:
    """K = 8 candidates with successive halving against one attack of the same iterations."""
    ds = load_dataset("embedded")
    print("| model | iterations | one attack (s) | K=8 tuned (s) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for model, its in (("lenet", 200), ("convnet", 200), ("resnet18", 40)):
        obs, _, _ = observation(Cell("cost", model), ds, [3], None, args.seed)
        times = {}
        for mode in ("off", "wide"):  # wide: the 8 TV weights of WIDE_GRID
            build_attack("inverting-gradients", tune=mode, iterations=4).reconstruct(obs)  # warm-up
            t0 = time.perf_counter()
            build_attack("inverting-gradients", tune=mode, iterations=its).reconstruct(obs)
            times[mode] = time.perf_counter() - t0
        print(f"| {model} | {its} | {times['off']:.1f} | {times['wide']:.1f} | {times['wide'] / times['off']:.2f} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default=None, help="comma-separated cell names (default: all)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=400, help="iterations of the reference recipe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--victims", default="gradaudit-out/victims")
    parser.add_argument("--out", default="gradaudit-out/strongest_attack.jsonl")
    parser.add_argument("--summary", default=None)
    parser.add_argument("--cost", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.summary:
        summary(Path(args.summary))
        return
    if args.cost:
        cost(args)
        return
    wanted = None if args.cells is None else set(args.cells.split(","))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as out:
        for cell in CELLS:
            if wanted is None or cell.name in wanted:
                run_cell(cell, args, out)


if __name__ == "__main__":
    main()
