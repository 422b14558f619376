"""Cost of the loss-aware vulnerability proxy (LAVP, seed 000) per sample, against the attack it predicts.

For LeNet and the CIFAR ResNet-18 at 3x32x32 (CPU, one embedded image, B = 1, FedSGD), prints:

1. ms per Hessian-vector product (one forward-mode jvp of x -> g(x) plus one cached vjp), L2 and cosine.
2. LAVP time per sample, each quantity by its own Lanczos run (:func:`gradaudit.proxies.lanczos`):
   lambda_max (which="LA", tol 1e-3, run to convergence) and lambda_min (which="SA", a fixed budget of
   products; lambda_min of these Hessians does not converge in any affordable budget, so its time is the
   budget's and the value an upper bound), for L2 and cosine; the products used and the convergence flag.
   LeNet also gets the exact dense route (J materialised, eigvalsh of both D x D Gauss-Newton forms).
3. The attack on the same sample: Inverting Gradients (``build_attack("inverting-gradients")``, cosine +
   TV, signed Adam). The per-iteration time is measured as (t(n2 iters) - t(n1 iters)) / (n2 - n1) and
   multiplied by the preset's default 1000 iterations ("x1000" in the output); for LeNet a full 1000-iteration
   attack is also timed end to end ("measured").
4. Hessian-vector products per second for N samples: one vmapped call over samples vs a loop.
5. How ``gradaudit vulnerability`` runs it: lambda_max for L2 and cosine (tol 1e-3) of N samples solved
   together (``compute_proxies(..., which=("max",), batch_size=N)``), time per sample, and that time as a
   percentage of the attack's (the 2% target of the issue).

Run:  .venv/bin/python benchmarks/lavp_cost.py [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from gradaudit.attacks import build_attack
from gradaudit.attacks.matching.presets import PRESETS
from gradaudit.data import load_dataset
from gradaudit.models import ModelSpec, build_model
from gradaudit.proxies import GradientMap, SampleHessian, batched_hvp_fn, compute_proxies, lanczos
from gradaudit.threat import Client, DataSpec, ServerKnowledge


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def setup(name: str, ds, index: int = 0):
    torch.manual_seed(0)
    spec = ModelSpec(name, ds.num_classes, ds.shape)
    model = build_model(spec)
    img, lab = ds.batch([index])
    data = DataSpec(ds.name, ds.mean, ds.std)
    obs = Client(model, spec, data, knowledge=ServerKnowledge(labels=True)).share(img, lab)
    return model, obs, ds.normalize(img)[0], lab[0]


def hvp_ms(gmap, x, y, loss, repeats: int) -> float:
    H = SampleHessian(gmap, x, y, loss)
    v = torch.randn(gmap.dim, generator=torch.Generator().manual_seed(0))
    H(v)  # warm-up
    _, t = _timed(lambda: [H(v) for _ in range(repeats)])
    return 1e3 * t / repeats


def attack_iteration_s(obs, n1: int, n2: int) -> float:
    def run(n):
        return _timed(lambda: build_attack("inverting-gradients", iterations=n).reconstruct(obs))[1]

    run(1)
    return min((run(n2) - run(n1)) / (n2 - n1) for _ in range(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared box)")
    parser.add_argument("--quick", action="store_true", help="smaller budgets (noisier, faster)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("embedded")
    default_iters = PRESETS["inverting-gradients"]["iterations"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU, float32, input 3x32x32, "
          f"embedded image 0, B=1")
    plans = {  # model: (HVP repeats, lambda_min budget, attack n1/n2, batch N)
        "lenet": (20, 100, (20, 120), 8),
        "resnet18": (3, 30 if not args.quick else 10, (2, 5), 4),
    }
    for name, (reps, budget, (n1, n2), N) in plans.items():
        model, obs, x, y = setup(name, ds)
        gmap = GradientMap.from_source(obs)
        print(f"\n== {name}: P = {gmap.num_params:,} parameters, D = {gmap.dim} inputs")
        for loss in ("l2", "cosine"):
            print(f"  HVP {loss:6s}: {hvp_ms(gmap, x, y, loss, reps):8.1f} ms per product")
        total = 0.0
        for loss in ("l2", "cosine"):
            H = SampleHessian(gmap, x, y, loss)
            top, t_top = _timed(lambda: lanczos(H, which="LA", tol=1e-3, maxiter=200)[0]["LA"])
            H = SampleHessian(gmap, x, y, loss)
            low, t_low = _timed(lambda: lanczos(H, which="SA", tol=1e-3, maxiter=budget)[0]["SA"])
            total += t_top + t_low
            print(f"  lambda_max {loss:6s} = {top.value:10.4g}  {top.iterations:4d} products  {t_top:7.2f} s  "
                  f"converged={top.converged}")
            print(f"  lambda_min {loss:6s} <= {low.value:9.4g}  {low.iterations:4d} products  {t_low:7.2f} s  "
                  f"converged={low.converged} (residual {low.residual:.2g})")
        print(f"  LAVP total (4 Lanczos runs): {total:.1f} s per sample")
        if name == "lenet":
            t, dt = _timed(lambda: compute_proxies(obs, ds.batch([0])[0], [int(y)], method="dense"))
            r = t.rows[0]
            print(f"  dense (exact) all four: {dt:.1f} s  l2 [{r['l2_min']:.4g}, {r['l2_max']:.4g}]  "
                  f"cosine [{r['cosine_min']:.4g}, {r['cosine_max']:.4g}]")
        it = attack_iteration_s(obs, n1, n2)
        print(f"  attack inverting-gradients: {1e3 * it:.1f} ms/iteration -> {it * default_iters:.1f} s for the "
              f"preset's {default_iters} iterations (x{default_iters})")
        if name == "lenet":
            rec, t_full = _timed(lambda: build_attack("inverting-gradients").reconstruct(obs))
            print(f"  attack inverting-gradients, {default_iters} iterations measured: {t_full:.1f} s "
                  f"(final cosine distance {rec.matching_loss:.3g})")
        print(f"  ratio attack / LAVP(4 runs) = {it * default_iters / total:.2f}")
        n_rank = 32 if name == "lenet" else 8
        imgs, labs = ds.batch(list(range(n_rank)))
        compute_proxies(obs, imgs[:2], labs[:2].tolist(), which=("max",), batch_size=2)  # warm-up
        _, t_rank = _timed(lambda: compute_proxies(obs, imgs, labs.tolist(), which=("max",), batch_size=n_rank,
                                                   vectorize=name == "lenet"))
        per = t_rank / n_rank
        print(f"  lambda_max l2 + cosine, {n_rank} samples solved together: {1e3 * per:.1f} ms per sample = "
              f"{100 * per / (it * default_iters):.2f}% of the attack (target <= 2%)")
        xs, ys = ds.normalize(ds.batch(list(range(N)))[0]), ds.labels[:N]
        V = torch.randn(N, gmap.dim, generator=torch.Generator().manual_seed(1))
        for vec in (True, False):
            B = batched_hvp_fn(gmap, xs, ys, "l2", vectorize=vec)
            B(V)  # warm-up
            dt = min(_timed(lambda: B(V))[1] for _ in range(2))
            print(f"  {'vmap' if vec else 'loop'} over N={N} samples: {N / dt:7.1f} HVPs/s ({1e3 * dt / N:.1f} ms each)")


if __name__ == "__main__":
    main()
