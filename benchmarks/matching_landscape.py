"""How sharply does the observed update pin down the private batch? The matching distance of noisy copies of it.

Gradient matching can only descend towards the private batch x if images near x explain the update u* better
than images far from it. This measures that directly, with the private batch in hand (an evaluation, never an
attack): for noise levels sigma (in the normalised space, where the attacks' random start has sigma = 1), the
global cosine distance

    d(sigma) = D(u(clip(x + sigma * n), y), u*),   n ~ N(0, I),

of the batch's noisy copies (clipped to the pixel box as the attacks' iterates are), with the PSNR of those
copies, and the same distance over every tensor but the classifier's (which at B = 1 gives the penultimate
features exactly, so it is matched long before the rest). On a smooth landscape d grows slowly with sigma and a
copy at 30 dB sits close to the update; on a rough one d saturates at the random guess's level within a few
tens of dB of the image, and an attack that ends at that d may be anywhere.

With ``--against FILE`` (rows of ``benchmarks/strongest_attack.py``) each recorded attack's final distance is
placed on this curve: its *noise-equivalent PSNR* is the PSNR of the noisy copy that sits as far from the
update (interpolated in log sigma, clamped to the grid's ends). The update cannot tell the attack's result from
that copy. It is not a prediction of the attack's PSNR: a smooth, structured error costs less distance than
noise, and a high figure next to a low real PSNR says that the update does not resolve the image there (a
rough landscape, or many preimages), not that the attack is near it.

    .venv/bin/python benchmarks/matching_landscape.py --cells resnet18-fresh-b1,convnet-bn-fresh-b1 --images 8
    .venv/bin/python benchmarks/matching_landscape.py --cells resnet18-fresh-b1 --against runs/strongest.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from gradaudit.attacks.matching.victim import last_linear_layer
from gradaudit.data import load_dataset
from gradaudit.evaluation.fit import noisy_copy, update_distances
from gradaudit.metrics import psnr
from gradaudit.models import build_model

from strongest_attack import CELLS, observation, pick_images, victim_weights

SIGMAS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def landscape(obs, truth: torch.Tensor, labels: torch.Tensor, sigmas, draws: int) -> dict:
    """Per sigma: mean PSNR of the copies, median d over every tensor and over all but the classifier's."""
    head = last_linear_layer(build_model(obs.model), obs.model.num_classes)
    distances = update_distances(obs, excludes=((), tuple(n for n in head if n is not None)))  # every / below
    out = {}
    for sigma in sigmas:
        copies = [noisy_copy(truth, obs, sigma, seed) for seed in range(draws)]
        d = [distances(c, labels) for c in copies]
        out[sigma] = {"psnr": statistics.fmean(float(psnr(c, truth).mean()) for c in copies),
                      "d": statistics.median(e for e, _ in d),
                      "d_below_classifier": statistics.median(b for _, b in d)}
    return out


def equivalent_psnr(curve: dict, d: float) -> float:
    """The PSNR of the noisy copy as far from the update as ``d`` (interpolated in log sigma; clamped to the
    grid's ends)."""
    points = sorted((s, v["d"], v["psnr"]) for s, v in curve.items())
    if d <= points[0][1]:
        return points[0][2]
    for (s0, d0, p0), (s1, d1, p1) in zip(points, points[1:]):
        if d0 <= d <= d1 and d1 > d0:
            t = (d - d0) / (d1 - d0)
            return p0 + t * (p1 - p0)  # PSNR is linear in log sigma up to the clipping
    return points[-1][2]


def recorded(path: Path | None) -> dict:
    """(cell, image) -> {attack: final distance} from strongest_attack.py rows."""
    out: dict = {}
    if path is None:
        return out
    for line in path.read_text().splitlines():
        row = json.loads(line)
        for attack in ("reference", "fixed", "tuned"):
            fit = row.get(f"{attack}_fit")
            if fit:
                out.setdefault((row["cell"], row["image"]), {})[attack] = fit["reconstruction"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="resnet18-fresh-b1,convnet-bn-fresh-b1")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--victims", default="gradaudit-out/victims")
    parser.add_argument("--against", default=None, help="strongest_attack.py rows: place their distances")
    parser.add_argument("--out", default="gradaudit-out/matching_landscape.jsonl")
    args = parser.parse_args()
    wanted = args.cells.split(",")
    unknown = set(wanted) - {c.name for c in CELLS}
    if unknown:
        parser.error(f"unknown cell '{sorted(unknown)[0]}'; choose from {', '.join(c.name for c in CELLS)}")
    attacks = recorded(Path(args.against) if args.against else None)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(args.out, "a") as out:
        for cell in (c for c in CELLS if c.name in wanted):
            ds = load_dataset(cell.dataset, image_size=cell.image_size)
            weights = victim_weights(cell, Path(args.victims))
            for n, index in enumerate(pick_images(ds, args.images, args.seed)):
                indices = [index] + ([] if cell.batch == 1 else pick_images(ds, cell.batch - 1, args.seed + 1000 + n))
                obs, truth, labels = observation(cell, ds, list(dict.fromkeys(indices))[:cell.batch], weights,
                                                 args.seed)
                curve = landscape(obs, truth, labels, SIGMAS, args.draws)
                row = {"cell": cell.name, "image": index, "curve": {str(s): v for s, v in curve.items()},
                       "noise_equivalent_psnr": {a: equivalent_psnr(curve, d)
                                           for a, d in attacks.get((cell.name, index), {}).items()}}
                out.write(json.dumps(row) + "\n")
                out.flush()
                rows.append(row)
                print(f"{cell.name} image {index}: " + ", ".join(
                    f"sigma {s}: {v['psnr']:.1f} dB d {v['d']:.3f}/{v['d_below_classifier']:.3f}"
                    for s, v in curve.items()), flush=True)
    print()
    print("| victim | " + " | ".join(f"sigma {s}" for s in SIGMAS) + " |")
    print("| --- | " + " | ".join("---:" for _ in SIGMAS) + " |")
    for name in wanted:
        mine = [r for r in rows if r["cell"] == name]
        if not mine:
            continue
        cells = []
        for s in SIGMAS:
            vs = [r["curve"][str(s)] for r in mine]
            cells.append(f"{statistics.fmean(v['psnr'] for v in vs):.1f} dB: "
                         f"{statistics.median(v['d'] for v in vs):.3f} / "
                         f"{statistics.median(v['d_below_classifier'] for v in vs):.3f}")
        print(f"| {name} ({len(mine)}) | " + " | ".join(cells) + " |")
        eq = [r["noise_equivalent_psnr"] for r in mine if r["noise_equivalent_psnr"]]
        if eq:
            print("  noise-equivalent PSNR of the recorded attacks (median over images): " + ", ".join(
                f"{a} {statistics.median(e[a] for e in eq if a in e):.1f} dB"
                for a in ("reference", "fixed", "tuned") if any(a in e for e in eq)))


if __name__ == "__main__":
    main()
