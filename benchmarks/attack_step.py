"""Cost of one gradient-inversion iteration against one training step, and of vectorised restarts.

For LeNet and the CIFAR ResNet-18 at B=1 and B=8 (32x32x3, CPU): ms per training step (forward, backward,
SGD update), ms per attack iteration (the engine's step: gradient of the cosine gradient-matching objective
w.r.t. the dummy batch, signed Adam step, box clamp), and their ratio. Then the cost of R=8 restarts run as
one vmapped computation against R=1.

Per-iteration times are measured as (time(n2 iterations) - time(n1 iterations)) / (n2 - n1), which removes
the set-up cost (model rebuild, label handling). On a shared machine single measurements move by +-20%:
``--repeats R`` measures the training step and the attack iteration R times, alternately, and reports the
median of each and of the R per-pair ratios with their range.
Run:  .venv/bin/python benchmarks/attack_step.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from gradaudit.attacks.matching.engine import GradientMatchingAttack
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, ServerKnowledge

DATA = DataSpec("bench", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def observation(name: str, B: int):
    torch.manual_seed(0)
    spec = ModelSpec(name, 10, (3, 32, 32))
    model = build_model(spec)
    obs = Client(model, spec, DATA, knowledge=ServerKnowledge(labels=True)).share(torch.rand(B, 3, 32, 32),
                                                                                  torch.arange(B) % 10)
    return model, obs


def train_step_ms(model, B: int, repeats: int) -> float:
    x, y = torch.randn(B, 3, 32, 32), torch.arange(B) % 10
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def attack_iteration_ms(obs, restarts: int, n1: int, n2: int, vectorize: bool = True) -> float:
    def run(n):
        attack = GradientMatchingAttack(iterations=n, restarts=restarts, vectorize=vectorize, schedule="none")
        t = time.perf_counter()
        attack.reconstruct(obs)
        return time.perf_counter() - t

    run(2)  # warm-up
    diffs = [(run(n2) - run(n1)) / (n2 - n1) for _ in range(2)]
    return 1e3 * min(diffs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    parser.add_argument("--repeats", type=int, default=1, help="alternated train / attack measurements per row")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    torch.set_num_threads(torch.get_num_threads())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"{'model':10s} {'B':>3s} {'train ms':>9s} {'attack ms':>10s} {'ratio':>6s}  ratio range")
    for name, n1, n2 in (("lenet", 5, 45), ("resnet18", 2, 6)):
        for B in (1, 8):
            model, obs = observation(name, B)
            pairs = []
            for _ in range(args.repeats):
                tr = train_step_ms(model, B, 20 if name == "lenet" else 5)
                pairs.append((tr, attack_iteration_ms(obs, 1, n1, n2 if not args.quick else n1 + 2)))
            tr, at = (statistics.median(p[i] for p in pairs) for i in (0, 1))
            ratios = [a / t for t, a in pairs]
            print(f"{name:10s} {B:3d} {tr:9.1f} {at:10.1f} {statistics.median(ratios):6.2f}  "
                  f"{min(ratios):.2f}-{max(ratios):.2f} ({len(ratios)} pairs)")
    _, obs = observation("lenet", 1)
    one = attack_iteration_ms(obs, 1, 5, 45)
    eight = attack_iteration_ms(obs, 8, 5, 45)
    loop = attack_iteration_ms(obs, 8, 5, 25, vectorize=False)
    print(f"\nLeNet B=1 restarts: 1 -> {one:.1f} ms/it, 8 vmapped -> {eight:.1f} ms/it ({eight / one:.2f}x), "
          f"8 looped -> {loop:.1f} ms/it ({loop / one:.2f}x)")


if __name__ == "__main__":
    main()
