"""Named presets of the gradient-matching engine, with their papers' settings (CPU-sized iteration counts).

* ``dlg`` - Deep Leakage from Gradients (Zhu et al., NeurIPS 2019): L2 distance, L-BFGS (lr 1, 20 inner
  iterations per step), no prior. The reference runs 300 steps; the default here is 200.
* ``inverting-gradients`` - GI-x (Geiping et al., NeurIPS 2020): cosine distance, total variation, Adam lr 0.1
  on the sign of the gradient, x0.1 at 3/8, 5/8, 7/8 of the iterations, box constraint, best restart kept. The
  reference runs 24k iterations x 8 restarts on a GPU; the CPU default is 1000 x 1.
* ``gradinversion`` - Inverting Gradients plus batch-norm statistics matching (Yin et al., CVPR 2021), first BN
  layer weighted x10.
"""

from __future__ import annotations

from .engine import MatchingConfig

PRESETS: dict[str, dict] = {
    "dlg": dict(distance="l2", regularizers={}, optimizer="lbfgs", lr=1.0, signed=False, iterations=200,
                restarts=1, schedule="none", boxed=True, lbfgs_inner_steps=20, labels="auto"),
    "inverting-gradients": dict(distance="cosine", regularizers={"tv": 1e-3}, optimizer="adam", lr=0.1,
                                signed=True, iterations=1000, restarts=1, schedule="multistep", boxed=True,
                                labels="auto"),
    "gradinversion": dict(distance="cosine", regularizers={"tv": 1e-3, "bn": 1e-3}, optimizer="adam", lr=0.1,
                          signed=True, iterations=1000, restarts=1, schedule="multistep", boxed=True,
                          first_bn_weight=10.0, labels="auto"),
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
