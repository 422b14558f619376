"""Named presets of the gradient-matching engine, with their papers' settings (CPU-sized iteration counts).

* ``dlg`` - Deep Leakage from Gradients (Zhu et al., NeurIPS 2019): L2 distance, L-BFGS (lr 1, 20 inner
  iterations per step), no prior. The reference runs 300 steps; the default here is 200.
* ``inverting-gradients`` - GI-x (Geiping et al., NeurIPS 2020): cosine distance, total variation, Adam lr 0.1
  on the sign of the gradient, x0.1 at 3/8, 5/8, 7/8 of the iterations, box constraint, best restart kept. The
  reference runs 24k iterations x 8 restarts on a GPU; the CPU default is 1000 x 1.
* ``ig-reference`` - the reference framework's published Inverting Gradients configuration (breaching's
  ``invertinggradients`` recipe): cosine distance, TV 0.2, signed Adam lr 0.1, x0.1 at 3/8, 5/8, 7/8, box.
  Always the fixed recipe (never tuned), so benchmarks can compare against it on the same gradient.
* ``gradinversion`` - Inverting Gradients plus batch-norm statistics matching (Yin et al., CVPR 2021), first BN
  layer weighted x10.
* ``gi-z``, ``gi-w``, ``gias`` - generative image priors (Jeon et al., NeurIPS 2021, seed 001;
  :mod:`gradaudit.attacks.priors`): cosine distance, TV 1e-4, z-norm 1e-3, plain Adam with the multistep
  schedule, over a generator's latent (GI-z, lr 1e-1), its weights at a fixed random z (GI-w, lr 1e-4), or
  GI-z followed by per-image generator copies (GIAS). Reference: GI-z 500-1000 iterations at lr 3e-2..1e-1,
  then 5000-8000 GIAS iterations at lr 1e-3; the CPU defaults are 200 + 200, with the latent lr at the top
  of the reference range (1e-1 beat 3e-2 at 60 iterations on Fashion-MNIST: 14.9 vs 13.9 dB) and the
  weights' lr at 1e-4: at the reference 1e-3 the per-image copies diverged on a Fashion-MNIST batch of 4
  (matching loss 0.016 -> 0.021; 1e-4: -> 0.006). They need ``generator=PATH``.
* ``dip`` - deep image prior (seed 002): the weights of an untrained U-Net with a fixed random input,
  Adam lr 1e-2, TV 1e-4, 300 iterations.
"""

from __future__ import annotations

from .engine import MatchingConfig

#: DLG's candidates: L-BFGS from a normal or a uniform start (its failures are mostly bad starts)
DLG_GRID = {"init": ["randn", "rand"]}

PRESETS: dict[str, dict] = {
    "dlg": dict(distance="l2", regularizers={}, optimizer="lbfgs", lr=1.0, signed=False, iterations=200,
                restarts=1, schedule="none", boxed=True, lbfgs_inner_steps=20, labels="auto", tune="auto",
                grid=DLG_GRID),
    "inverting-gradients": dict(distance="cosine", regularizers={"tv": 1e-3}, optimizer="adam", lr=0.1,
                                signed=True, iterations=1000, restarts=1, schedule="multistep", boxed=True,
                                labels="auto", tune="auto"),
    "ig-reference": dict(distance="cosine", regularizers={"tv": 0.2}, optimizer="adam", lr=0.1, signed=True,
                         iterations=1000, restarts=1, schedule="multistep", boxed=True, init="randn",
                         labels="auto", tune="off"),
    "gradinversion": dict(distance="cosine", regularizers={"tv": 1e-3, "bn": 1e-3}, optimizer="adam", lr=0.1,
                          signed=True, iterations=1000, restarts=1, schedule="multistep", boxed=True,
                          first_bn_weight=10.0, labels="auto", tune="auto"),
    "gi-z": dict(parameterization="latent", distance="cosine", regularizers={"tv": 1e-4, "z-norm": 1e-3},
                 optimizer="adam", lr=0.1, signed=False, iterations=300, restarts=1, schedule="multistep",
                 labels="auto"),
    "gi-w": dict(parameterization="generator", distance="cosine", regularizers={"tv": 1e-4}, optimizer="adam",
                 lr=1e-4, signed=False, iterations=300, restarts=1, schedule="multistep", labels="auto"),
    "gias": dict(parameterization="gias", distance="cosine", regularizers={"tv": 1e-4, "z-norm": 1e-3},
                 optimizer="adam", latent_lr=0.1, latent_iterations=200, lr=1e-4, signed=False, iterations=200,
                 restarts=1, schedule="multistep", labels="auto"),
    "dip": dict(parameterization="dip", distance="cosine", regularizers={"tv": 1e-4}, optimizer="adam", lr=1e-2,
                signed=False, iterations=300, restarts=1, schedule="multistep", labels="auto"),
}


def preset_config(name: str, **overrides) -> MatchingConfig:
    """The preset's MatchingConfig with ``overrides`` (None values ignored) applied."""
    from ...errors import unknown_name

    if name not in PRESETS:
        raise unknown_name("attack", name, PRESETS)
    from dataclasses import fields

    from ...errors import ConfigError

    valid = {f.name for f in fields(MatchingConfig)}
    bad = sorted(k for k, v in overrides.items() if v is not None and k not in valid)
    if bad:
        raise ConfigError(f"attack '{name}' has no hyper-parameter {', '.join(repr(b) for b in bad)}; "
                          f"valid: {', '.join(sorted(valid))}")
    settings = dict(PRESETS[name])
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return MatchingConfig(**settings)
