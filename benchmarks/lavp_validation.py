"""Validation study of the loss-aware vulnerability proxy (LAVP, seed 000) on two datasets x two architectures.

For each setting, :func:`gradaudit.evaluation.lavp_validation.validate_proxies` attacks N samples one at a time (B = 1,
FedSGD, labels known, one freshly initialised victim per setting, seed 0) with an L2 attack (DLG: L-BFGS) and
a cosine attack (Inverting Gradients preset), scores PSNR / SSIM / MSE, computes the proxies, and reports
Spearman rho with bootstrap 95 % CIs per proxy x metric x attack loss, plus the worst-case local analysis.

Settings (the attack budgets were chosen so that no setting's reconstructions saturate and the medians do
not fail, measured on samples 0-2 with one CPU thread; the sizes so that the whole study fits in 25 minutes
on a shared 2-core machine, after ``--measure``):

* ``embedded-lenet``: embedded images (3x32x32), LeNet (sigmoid); Lanczos lambda_max only (the exact dense
  spectrum costs ~20 s per sample here, more than both attacks together); L2 = DLG L-BFGS 40 iterations;
  cosine = IG's loss (cosine + TV 1e-3, box) with L-BFGS 40 iterations, since IG's signed Adam stays at
  ~10 dB on LeNet within 1000 steps; local analysis 100 steps.
* ``fmnist-lenet``: Fashion-MNIST (1x28x28), LeNet; exact dense spectrum (lambda_max and lambda_min, ~1.3 s
  per sample); L2 L-BFGS 10 iterations (60 reached ~95 dB on samples 0-1: near-perfect, little ranking left),
  cosine L-BFGS 20 iterations; local analysis 100 steps.
* ``embedded-convnet`` / ``fmnist-convnet``: ConvNet width 32 with ``norm="none"`` (batch norm at B = 1
  makes the gradient nearly invariant to brightness/contrast, README "Known limits"); Lanczos lambda_max only
  (dense exceeds the 2 GiB Jacobian limit at 3x32x32, and iterative lambda_min does not converge); L2 = DLG
  L-BFGS 20 iterations; cosine = the IG preset unchanged (signed Adam lr 0.1, multistep) 300 steps; local
  analysis 25 steps (its float64 double-backward through the ConvNet costs ~0.03-0.07 s a step).

Run:
    .venv/bin/python benchmarks/lavp_validation.py --measure          # per-sample cost on 3 samples each
    .venv/bin/python benchmarks/lavp_validation.py     # = --n embedded-lenet=16,fmnist-lenet=32,...convnet=16
    .venv/bin/python benchmarks/lavp_validation.py --render           # tables again from the saved files
Writes ``<out>/<setting>/{validation.csv, correlations.csv, validation.md, validation.json}`` and
``<out>/summary.md`` (all tables).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gradaudit.data import load_dataset
from gradaudit.evaluation.lavp_validation import validate_proxies
from gradaudit.report.validation import validation_markdown, write_validation

LENET = dict(model="lenet", kwargs={}, optimizers={"l2": "lbfgs", "cosine": "lbfgs"}, local_steps=100)
CONVNET = dict(model="convnet", kwargs={"norm": "none"}, method="lanczos", which=("max",),
               optimizers={"l2": "lbfgs", "cosine": "adam"}, iterations={"l2": 20, "cosine": 300}, local_steps=25)
#: samples per setting: the full study took 821 s on the shared 2-core machine (budget: 25 minutes)
DEFAULT_N = {"embedded-lenet": 16, "fmnist-lenet": 32, "embedded-convnet": 16, "fmnist-convnet": 16}
SETTINGS: dict[str, dict] = {
    "embedded-lenet": dict(LENET, dataset="embedded", method="lanczos", which=("max",),
                           iterations={"l2": 40, "cosine": 40}),
    "fmnist-lenet": dict(LENET, dataset="fashion-mnist", method="dense", which=("max", "min"),
                         iterations={"l2": 10, "cosine": 20}),
    "embedded-convnet": dict(CONVNET, dataset="embedded"),
    "fmnist-convnet": dict(CONVNET, dataset="fashion-mnist"),
}


def run_setting(name: str, n: int, n_boot: int, seed: int, out: Path | None, log=print):
    s = SETTINGS[name]
    ds = load_dataset(s["dataset"])
    t = time.perf_counter()
    last = {}

    def progress(stage, done, total):
        if done == total or stage not in last:
            log(f"  [{name}] {stage} {done}/{total} ({time.perf_counter() - t:.0f} s)")
        last[stage] = done

    res = validate_proxies(ds, s["model"], list(range(n)), seed=seed, model_kwargs=s["kwargs"],
                           iterations=s["iterations"], optimizers=s["optimizers"], which=s["which"],
                           method=s["method"], n_boot=n_boot, local_steps=s["local_steps"], progress=progress)
    title = f"{name}: {s['dataset']} / {s['model']}{' ' + json.dumps(s['kwargs']) if s['kwargs'] else ''}"
    if out is not None:
        write_validation(res, out / name, title=title)
    return res, title


def render(out: Path, names: list[str]) -> None:
    from gradaudit.evaluation.lavp_validation import load_validation

    sections, total = [], 0.0
    for name in names:
        res = load_validation(out / name)
        s = SETTINGS[name]
        title = f"{name}: {s['dataset']} / {s['model']}{' ' + json.dumps(s['kwargs']) if s['kwargs'] else ''}"
        (out / name / "validation.md").write_text(validation_markdown(res, title))
        sections.append(validation_markdown(res, title))
        total += res.meta["seconds"]["total"]
    (out / "summary.md").write_text("\n".join(sections) + f"\nSum of the settings' study times: {total:.0f} s.\n")
    print((out / "summary.md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help="comma-separated subset of " + ", ".join(SETTINGS))
    parser.add_argument("--n", default=",".join(f"{k}={v}" for k, v in DEFAULT_N.items()),
                        help="samples per setting: one number, or name=N,name=N")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--measure", action="store_true", help="3 samples per setting; print seconds/sample")
    parser.add_argument("--out", type=Path, default=Path("gradaudit-out/lavp-validation"))
    parser.add_argument("--render", action="store_true", help="no new run: rebuild the tables (validation.md, "
                        "summary.md) from the files a previous run left in --out")
    args = parser.parse_args()
    if args.render:
        render(args.out, [x for x in args.settings.split(",") if x])
        return
    torch.set_num_threads(args.threads)
    names = [x for x in args.settings.split(",") if x]
    if "=" in args.n:
        ns = {k: int(v) for k, v in (p.split("=") for p in args.n.split(","))}
    else:
        ns = {k: int(args.n) for k in names}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU", flush=True)
    t0 = time.perf_counter()
    sections = []
    for name in names:
        n = 3 if args.measure else ns[name]
        ts = time.perf_counter()
        res, title = run_setting(name, n, 100 if args.measure else args.n_boot, args.seed,
                                 None if args.measure else args.out,
                                 log=lambda m: print(m, flush=True))
        sec = res.meta["seconds"]
        per = {k: round(v / n, 2) for k, v in sec.items()}
        print(f"{name}: n={n}, {time.perf_counter() - ts:.0f} s, per sample: {per}", flush=True)
        sections.append(validation_markdown(res, title))
    total = time.perf_counter() - t0
    print(f"total {total:.0f} s", flush=True)
    if not args.measure:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.md").write_text("\n".join(sections) + f"\nTotal wall time: {total:.0f} s.\n")
        print((args.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
