"""Which observation-only criterion picks the best candidate? (The study behind the tuning attack's defaults.)

For every image, the tuning attack runs a grid of candidates to the end (no pruning, ``eta=1``) and keeps
each candidate's best iterate by the run's criterion. Each candidate is then scored against the private image
(PSNR, SSIM), and the criteria are compared by their *selection regret*: the PSNR of the best candidate minus
the PSNR of the candidate a criterion picks. Criteria: ``cosine`` (unregularised cosine distance over all
tensors), ``heldout`` (cosine on tensors left out of the fit: a second run with ``holdout``), ``consensus``
(mean squared distance to the other candidates' images), and ``own`` (each candidate's regularised
objective is not comparable; not used).

    .venv/bin/python benchmarks/tuning_study.py --model convnet --images 8 --iterations 400 --out study.jsonl

Each output line is one (image, candidate) with its setting, scores and quality; ``--summary FILE`` prints
the regret table of a finished file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from gradaudit.attacks.matching.engine import GradientMatchingAttack
from gradaudit.attacks.matching.tuning import consensus_scores
from gradaudit.data import load_dataset
from gradaudit.data.sampling import class_spread
from gradaudit.metrics.image import psnr, ssim
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, ServerKnowledge

DEFAULT_TV = [1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0]


def pick_images(ds, n: int, seed: int) -> list[int]:
    """n indices spread over the classes (gradaudit.data.sampling.class_spread)."""
    return class_spread(ds.labels, n, seed)


def observe(ds, model: str, kwargs: dict, index: int, seed: int, batch: int = 1, weights: str | None = None):
    spec = ModelSpec(model, ds.num_classes, ds.shape, kwargs)
    torch.manual_seed(seed)
    net = build_model(spec)
    if weights:
        from gradaudit.models.weights import load_weights

        load_weights(net, weights)
    idx = [index] if batch == 1 else [index] + pick_images(ds, batch - 1, seed + index + 1)
    images, labels = ds.batch(idx)
    client = Client(net, spec, DataSpec(ds.name, ds.mean, ds.std), knowledge=ServerKnowledge(labels=True))
    return client.share(images, labels), images


def run(args) -> None:
    ds = load_dataset(args.dataset, image_size=args.image_size)
    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    if args.grid:
        grid = json.loads(args.grid)
    else:
        grid = {"tv": [float(v) for v in args.tv.split(",")]} if args.tv else {"tv": DEFAULT_TV}
    images = pick_images(ds, args.images, args.seed)
    out = open(args.out, "a")
    for i, index in enumerate(images):
        obs, truth = observe(ds, args.model, kwargs, index, args.seed, weights=args.weights)
        for select, holdout in (("cosine", 0.0), ("heldout", args.holdout)):
            if select == "heldout" and args.holdout <= 0:
                continue
            attack = GradientMatchingAttack(tune="auto", grid=grid, eta=1, select=select, holdout=holdout,
                                            iterations=args.iterations, lr=0.1, regularizers={"tv": 1e-3},
                                            seed=args.seed)
            t0 = time.perf_counter()
            rec = attack.reconstruct(obs)
            seconds = time.perf_counter() - t0
            rows = rec.config["tuning"]["candidates"]
            keys = sorted(rec.candidates)
            stack = torch.stack([rec.candidates[k][0] for k in keys])
            consensus = consensus_scores(stack)
            if args.save:
                folder = Path(args.save)
                folder.mkdir(parents=True, exist_ok=True)
                torch.save({"truth": truth, "images": stack, "rows": rows, "keys": keys, "index": index,
                            "model": args.model, "kwargs": kwargs, "seed": args.seed, "weights": args.weights},
                           folder / f"{args.model}-{index}-{select}.pt")
            for j, k in enumerate(keys):
                img = rec.candidates[k][0]
                line = {"model": args.model, "model_kwargs": kwargs, "dataset": args.dataset, "image": index,
                        "run": select, "candidate": k, "tv": rows[k]["regularizers"].get("tv"),
                        "lr": rows[k]["lr"], "init": rows[k]["init"], "score": rows[k]["score"], "consensus": float(consensus[j]),
                        "best_iteration": rows[k]["best_iteration"], "psnr": float(psnr(img, truth)[0]),
                        "ssim": float(ssim(img, truth)[0]), "iterations": args.iterations,
                        "seconds": seconds}
                out.write(json.dumps(line) + "\n")
            out.flush()
            best = max(range(len(keys)), key=lambda j: float(psnr(rec.candidates[keys[j]][0], truth)[0]))
            print(f"[{i + 1}/{len(images)}] image {index} {select}: {seconds:.0f} s, best tv "
                  f"{rows[keys[best]]['regularizers'].get('tv')}", flush=True)


def summary(path: Path) -> None:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for r in lines:
        groups.setdefault((r["model"], json.dumps(r["model_kwargs"]), r["dataset"], r["image"], r["run"]),
                          []).append(r)
    by_setting: dict[tuple, dict[str, list[float]]] = {}
    for (model, kw, data, image, run_), rows in groups.items():
        best = max(r["psnr"] for r in rows)
        crit = {"cosine" if run_ == "cosine" else "heldout": min(rows, key=lambda r: r["score"]),
                f"consensus ({run_})": min(rows, key=lambda r: r["consensus"])}
        for key in sorted({(r["tv"], r["lr"], r.get("init", "randn")) for r in rows}):
            crit[f"fixed tv={key[0]:g} lr={key[1]:g} {key[2]} ({run_})"] = next(
                r for r in rows if (r["tv"], r["lr"], r.get("init", "randn")) == key)
        table = by_setting.setdefault((model, kw, data), {})
        table.setdefault(f"oracle ({run_})", []).append(best)
        for name, r in crit.items():
            table.setdefault(name, []).append(best - r["psnr"])
    for (model, kw, data), table in by_setting.items():
        print(f"\n{model} {kw} on {data}: regret in dB (oracle: mean best PSNR)")
        for name, vals in table.items():
            print(f"  {name:32s} median {statistics.median(vals):6.2f}  mean {statistics.mean(vals):6.2f}  "
                  f"n={len(vals)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--model-kwargs", default=None)
    parser.add_argument("--dataset", default="embedded")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--tv", default=None, help="comma-separated TV weights (default: 8 from 1e-4 to 1)")
    parser.add_argument("--grid", default=None, help='a full grid as JSON, e.g. {"tv": [0.01, 0.2], "init": '
                        '["randn", "zeros"]}')
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--save", default=None, help="also save every candidate's images here (for offline study)")
    parser.add_argument("--weights", default=None, help="victim weights (safetensors) instead of a fresh model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="tuning_study.jsonl")
    parser.add_argument("--summary", default=None, help="print the regret table of this file and exit")
    args = parser.parse_args()
    if args.summary:
        summary(Path(args.summary))
        return
    torch.set_num_threads(args.threads)
    run(args)


if __name__ == "__main__":
    main()
