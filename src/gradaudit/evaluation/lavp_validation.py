"""Validation study of the loss-aware vulnerability proxy (LAVP, seed 000): do the proxies predict the attack?

Hong, Cho, Cho, Ahn, Kim, "Foreseeing Reconstruction Quality of Gradient Inversion: An Optimization
Perspective", AAAI 2024, arXiv 2312.12488; methods.md section 7 ("Evaluation").

For every sample of a dataset (B = 1, FedSGD, the same freshly initialised victim for all samples, built as
:func:`~gradaudit.proxies.lavp.rank_samples` and an audit cell build it: ``torch.manual_seed(seed)`` then
``build_model``):

1. **Attacks.** The client shares the sample's update (:class:`~gradaudit.threat.Client`, labels granted to
   the server or not; when not, the attacks and the proxies both use the iDLG-recovered label). Two
   attacks reconstruct it with a fixed budget:

   * ``"l2"``: the DLG preset (squared-L2 gradient distance, no prior, L-BFGS lr 1 with 20 inner steps per
     iteration, box constraint). L-BFGS, not Adam: measured on LeNet (embedded images 0-2, one CPU thread),
     60 L-BFGS iterations gave 19-21 dB in ~8 s, while 300 Adam steps (lr 0.1, plain or signed) stayed at
     ~9 dB, i.e. did not converge in that budget.
   * ``"cosine"``: the Inverting Gradients preset (cosine distance + TV 1e-3, signed Adam lr 0.1, multistep
     schedule, box). Its optimiser can be swapped (``optimizers={"cosine": "lbfgs"}``, same L-BFGS settings
     as DLG) where signed Adam does not converge in a CPU budget; on the sigmoid LeNet it does not
     (~10 dB after 1000 steps, against ~25 dB for 60 L-BFGS iterations), on the ReLU ConvNet it does
     (~21 dB after 300 steps).

   Each reconstruction is scored against the private image: MSE, PSNR, SSIM (:mod:`gradaudit.metrics`) and
   LPIPS when its pretrained weights are available offline (else the columns are NaN and
   ``meta["lpips"]`` says why).

2. **Proxies** of the same samples under the same model: :func:`~gradaudit.proxies.lavp.compute_proxies`
   (``grad_norm``, ``l2_max``, ``cosine_max``, ``fused_value_max``, ``fused_rank_max``; with
   ``which=("max", "min")`` also the ``*_min`` columns). lambda_min must come from ``method="dense"`` (exact;
   LeNet-sized models only): iterative lambda_min does not converge on these spectra (see
   :mod:`.lavp`), so ``"min"`` with any other method is rejected here.

3. **Correlations.** Spearman's rho with a seeded percentile-bootstrap 95 % interval
   (:func:`~gradaudit.proxies.correlation.spearman_bootstrap`) per proxy x metric x attack loss.

   *Orientation.* Proxies are taken as they are (larger value = predicted more vulnerable, the order in which
   ``gradaudit vulnerability`` ranks samples). Metrics are turned into a *quality* where larger is better:
   PSNR and SSIM as they are, MSE and LPIPS negated (``QUALITY_SIGN``). So rho > 0 means "samples with a
   larger proxy were reconstructed better", i.e. the proxy predicts vulnerability in the direction it is
   used; rho < 0 means the ranking is reversed. (PSNR = -10 log10 MSE, so the MSE and PSNR columns agree
   except where PSNR hits its 100 dB cap.)

   Every proxy is also compared with the gradient-norm baseline on the *same* bootstrap resamples:
   ``delta = rho(proxy) - rho(grad_norm)`` with its paired 95 % interval; LAVP "beats" the gradient norm
   for a metric and attack only where that interval lies above 0.

4. **Worst-case local analysis** (seed 000's Table 5 idea). The attack starts at
   ``x0 = x* + eps * z`` (normalised input space, z ~ N(0, I), the *same* z for every sample) and runs
   ``local_steps`` steps of plain gradient descent on the pure matching loss (no prior, no box, float64) of
   each loss. Two step-size rules:

   * ``common``: one step for all samples, ``1 / max_i lambda_max_i`` of that loss (the largest step that is
     stable for every sample under the quadratic model L ~ 1/2 d^T H d);
   * ``own``: each sample's ``1 / lambda_max`` (then the contraction of eigen-direction i is
     1 - lambda_i / lambda_max: only the shape of the spectrum, e.g. 1/condition = lambda_min / lambda_max,
     matters).

   The remaining error is ``||x_T - x*||^2 / ||x0 - x*||^2`` (and the loss ratio L(x_T) / L(x0)); its
   quality is the negated error, so again rho > 0 means "larger proxy, smaller remaining error". It is
   correlated with every proxy and, where lambda_min is known, with ``{loss}_min / {loss}_max``.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..proxies.correlation import _rowwise_spearman, spearman_bootstrap
from ..proxies.lavp import PROXY_COLUMNS, compute_proxies

#: attack loss -> (preset, default optimiser)
ATTACKS: dict[str, tuple[str, str]] = {"l2": ("dlg", "lbfgs"), "cosine": ("inverting-gradients", "adam")}
#: optimiser -> MatchingConfig overrides (L-BFGS as DLG runs it; Adam as Inverting Gradients runs it)
OPTIMIZERS: dict[str, dict] = {
    "lbfgs": dict(optimizer="lbfgs", signed=False, lr=1.0, lbfgs_inner_steps=20, schedule="none"),
    "adam": dict(optimizer="adam", signed=True, lr=0.1, schedule="multistep"),
}
#: default budget (iterations) per optimiser
DEFAULT_ITERATIONS: dict[str, int] = {"lbfgs": 60, "adam": 300}
METRICS: tuple[str, ...] = ("mse", "psnr", "ssim", "lpips")
#: +1 where larger is better, -1 where smaller is better (the metric is multiplied by it before Spearman)
QUALITY_SIGN: dict[str, int] = {"mse": -1, "psnr": 1, "ssim": 1, "lpips": -1}
STEP_RULES: tuple[str, ...] = ("common", "own")
BASELINE = "grad_norm"


@dataclass
class ValidationResult:
    """Outcome of :func:`validate_proxies`.

    rows: one dict per sample (input order): ``index``, ``label``, ``label_source``, every proxy column (with
        its convergence flags), ``{loss}_{mse,psnr,ssim,lpips}``, ``{loss}_matching_loss``, ``{loss}_seconds``
        per attack loss, and ``local_{loss}_{rule}_err`` / ``_loss_ratio`` for the local analysis.
    correlations: one dict per (study, attack, metric, proxy): ``study`` "attack" or "local", ``attack``
        (the attack's loss), ``metric`` (for "local": ``err_common`` / ``err_own``), ``proxy``, the
        :class:`~.correlation.SpearmanResult` fields, ``orientation`` (+1 / -1, see module docstring) and
        ``delta`` / ``delta_ci_low`` / ``delta_ci_high`` (paired difference to ``grad_norm``).
    meta: settings, attack configurations, timings, LPIPS status.
    """

    rows: list[dict]
    correlations: list[dict]
    meta: dict = field(default_factory=dict)

    def correlation(self, proxy: str, metric: str, attack: str, study: str = "attack") -> dict:
        for c in self.correlations:
            if (c["study"], c["attack"], c["metric"], c["proxy"]) == (study, attack, metric, proxy):
                return c
        raise KeyError((study, attack, metric, proxy))

    def column(self, name: str) -> np.ndarray:
        return np.array([r.get(name, np.nan) for r in self.rows], dtype=float)


def _parse(value: str):
    if value == "":
        return None
    if value in ("True", "False"):
        return value == "True"
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def load_validation(out: str | Path) -> ValidationResult:
    """A :class:`ValidationResult` read back from the files :func:`gradaudit.report.validation.write_validation` wrote (to re-render)."""
    out = Path(out)
    try:
        with (out / "validation.csv").open() as f:
            rows = [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]
        with (out / "correlations.csv").open() as f:
            corr = [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]
        meta = json.loads((out / "validation.json").read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"not a validation output folder ({e.filename} missing)") from None
    for c in corr:
        for k in ("rho", "p_value", "ci_low", "ci_high", "delta", "delta_ci_low", "delta_ci_high"):
            if c.get(k) is None:
                c[k] = float("nan")
    return ValidationResult(rows, corr, meta)


def oriented_quality(metric: str, values) -> np.ndarray:
    """``values`` of ``metric`` as a quality (larger = better reconstruction): MSE and LPIPS are negated."""
    if metric not in QUALITY_SIGN:
        from ..errors import unknown_name

        raise unknown_name("metric", metric, QUALITY_SIGN)
    return QUALITY_SIGN[metric] * np.asarray(values, dtype=float)


def paired_delta(x: Sequence[float], base: Sequence[float], quality: Sequence[float], *, n_boot: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> dict:
    """rho(x, q) - rho(base, q) and its percentile-bootstrap interval, both rhos on the same resamples.

    Samples with a non-finite value in any of the three are dropped; resamples where either rho is undefined
    (a constant column) are skipped. Returns delta, delta_ci_low, delta_ci_high.
    """
    x, b, q = (np.asarray(v, dtype=float).reshape(-1) for v in (x, base, quality))
    ok = np.isfinite(x) & np.isfinite(b) & np.isfinite(q)
    x, b, q = x[ok], b[ok], q[ok]
    nan = float("nan")
    out = {"delta": nan, "delta_ci_low": nan, "delta_ci_high": nan}
    if x.size < 3:
        return out
    full = _rowwise_spearman(np.stack([x, b]), np.stack([q, q]))
    out["delta"] = float(full[0] - full[1])
    if n_boot > 0 and np.isfinite(out["delta"]):
        idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
        d = _rowwise_spearman(x[idx], q[idx]) - _rowwise_spearman(b[idx], q[idx])
        d = d[np.isfinite(d)]
        if d.size:
            a = (1 - confidence) / 2
            out["delta_ci_low"], out["delta_ci_high"] = (float(v) for v in np.quantile(d, [a, 1 - a]))
    return out


def correlate(rows: list[dict], proxies: Sequence[str], quality: np.ndarray, *, study: str, attack: str,
              metric: str, orientation: int, n_boot: int, seed: int, baseline: str | None = BASELINE
              ) -> list[dict]:
    """Spearman (+ bootstrap CI, + paired delta to ``baseline``) of every proxy column against ``quality``."""
    out = []
    base = np.array([r.get(baseline, np.nan) for r in rows], dtype=float) if baseline else None
    for p in proxies:
        x = np.array([r.get(p, np.nan) for r in rows], dtype=float)
        res = spearman_bootstrap(x, quality, n_boot=n_boot, seed=seed).to_dict()
        row = {"study": study, "attack": attack, "metric": metric, "proxy": p, **res, "orientation": orientation}
        if base is not None and p != baseline:
            row.update(paired_delta(x, base, quality, n_boot=n_boot, seed=seed))
        else:
            row.update({"delta": float("nan"), "delta_ci_low": float("nan"), "delta_ci_high": float("nan")})
        out.append(row)
    return out


# ----------------------------------------------------------------------------- local analysis
def local_descent(gmap, x_star: torch.Tensor, y, loss: str, z: torch.Tensor, *, eps: float, steps: int,
                  step_size: float) -> dict:
    """Gradient descent on dist(g(x), g*) from x* + eps z; the remaining error and loss ratios after ``steps``.

    ``gmap``: a :class:`~.hessian.GradientMap` (use float64: the cosine loss near x* is ~1e-8). Returns
    ``err`` = ||x_T - x*||^2 / ||x0 - x*||^2, ``loss_ratio`` = L(x_T) / L(x0) and ``diverged`` (non-finite).
    """
    from torch.func import grad

    xs = gmap.sample(x_star)
    yy = gmap.label(y)
    g_star = gmap(xs, yy).detach()
    gs_norm = g_star.norm()

    def L(x):
        g = gmap(x, yy)
        if loss == "l2":
            return ((g - g_star) ** 2).sum()
        return 1 - (g * g_star).sum() / (g.norm() * gs_norm)

    dL = grad(L)
    x = xs + eps * z.to(xs.dtype).reshape(xs.shape)
    e0 = float(((x - xs) ** 2).sum())
    l0 = float(L(x))
    for _ in range(steps):
        x = (x - step_size * dL(x)).detach()
        if not bool(torch.isfinite(x).all()):
            break
    e = float(((x - xs) ** 2).sum())
    lt = float(L(x))
    finite = math.isfinite(e) and math.isfinite(lt)
    return {"err": e / e0 if finite else float("inf"), "loss_ratio": lt / l0 if finite and l0 > 0 else float("nan"),
            "diverged": not finite}


# ----------------------------------------------------------------------------- the study
def attack_configs(attacks: Iterable[str], optimizers: Mapping[str, str] | None = None,
                   iterations: int | Mapping[str, int] | None = None,
                   overrides: Mapping[str, dict] | None = None) -> dict[str, tuple[str, dict]]:
    """attack loss -> (preset, overrides for build_attack), with the optimiser swap and budget applied."""
    out = {}
    optimizers = dict(optimizers or {})
    for a in attacks:
        if a not in ATTACKS:
            from ..errors import unknown_name

            raise unknown_name("attack loss", a, ATTACKS)
        preset, default_opt = ATTACKS[a]
        opt = optimizers.get(a) or default_opt
        if opt not in OPTIMIZERS:
            from ..errors import unknown_name

            raise unknown_name("optimizer", opt, OPTIMIZERS)
        its = iterations.get(a) if isinstance(iterations, Mapping) else iterations
        # the study correlates the proxies with the presets' fixed recipes (not the self-tuning attack)
        ov = dict(OPTIMIZERS[opt], iterations=int(its) if its is not None else DEFAULT_ITERATIONS[opt], tune="off")
        ov.update((overrides or {}).get(a, {}))
        from ..attacks import build_attack

        try:
            build_attack(preset, **ov)  # checks every hyper-parameter now, before any work
        except ConfigError as e:
            raise ConfigError(f"{a} attack: {e}") from None
        out[a] = (preset, ov)
    unknown = set(optimizers) - set(out)
    if unknown:
        raise ConfigError(f"optimizer given for attack(s) not run: {sorted(unknown)}")
    return out


def _lpips(lpips):
    from ..metrics import LPIPSMetric

    if lpips == "auto":
        try:
            lpips = LPIPSMetric()
        except Exception as exc:  # noqa: BLE001 - LPIPS is optional; record why
            return None, f"unavailable: {type(exc).__name__}: {exc}"
    if lpips is None:
        return None, "not requested"
    if not lpips.available:
        return None, f"unavailable: {lpips.reason}"
    return lpips, "ok"


def check_validation_options(*, attacks: Sequence[str] = ("l2", "cosine"),
                             iterations: int | Mapping[str, int] | None = None,
                             optimizers: Mapping[str, str] | None = None,
                             attack_overrides: Mapping[str, dict] | None = None, which: Sequence[str] = ("max",),
                             method: str = "lanczos", n_boot: int = 1000, local_steps: int = 100,
                             local_eps: float = 0.1, local_rules: Sequence[str] = STEP_RULES,
                             proxy_kwargs: Mapping | None = None) -> dict[str, tuple[str, dict]]:
    """Every option of :func:`validate_proxies` that can be checked without data, checked (ConfigError);
    returns the attack configurations (:func:`attack_configs`)."""
    from ..checks import check_int, check_number
    from ..proxies.lavp import check_proxy_options

    which = tuple(which)
    check_proxy_options(method=method, which=which, **dict(proxy_kwargs or {}))
    if "min" in which and method != "dense":
        raise ConfigError("lambda_min needs method='dense': iterative lambda_min does not converge on these "
                          "Hessians (gradaudit.proxies.lavp), and an unconverged upper bound would be correlated "
                          "as if it were the proxy")
    bad_rules = [r for r in local_rules if r not in STEP_RULES]
    if bad_rules:
        from ..errors import unknown_name

        raise unknown_name("local step rule", bad_rules[0], STEP_RULES)
    check_int(local_steps, "local_steps", 0)
    check_number(local_eps, "local_eps", positive=True)
    check_int(n_boot, "n_boot", 1)
    return attack_configs(attacks, optimizers, iterations, attack_overrides)


def validate_proxies(dataset, model, indices: Sequence[int] | None = None, *, seed: int = 0,
                     attacks: Sequence[str] = ("l2", "cosine"), iterations: int | Mapping[str, int] | None = None,
                     optimizers: Mapping[str, str] | None = None,
                     attack_overrides: Mapping[str, dict] | None = None,
                     which: Sequence[str] = ("max",), method: str = "lanczos", n_boot: int = 1000,
                     labels_known: bool = True, model_kwargs: Mapping | None = None,
                     local_steps: int = 100, local_eps: float = 0.1, local_rules: Sequence[str] = STEP_RULES,
                     lpips="auto", data_root: str | None = None, proxy_kwargs: Mapping | None = None,
                     progress: Callable[[str, int, int], None] | None = None,
                     trust_code: bool = False) -> ValidationResult:
    """Attack every sample with an L2 and a cosine attack, compute its proxies, correlate (module docstring).

    Args:
        dataset: an :class:`~gradaudit.data.ImageDataset` or a dataset name. ``data_root`` for a name.
        model: a model name (with ``model_kwargs``, e.g. ``{"norm": "none"}``) or a ModelSpec.
        indices: the samples (default: the first 16).
        seed: model initialisation (one model for all samples), attack initialisation, bootstrap.
        attacks: subset of ("l2", "cosine"). iterations: one budget for all attacks or per attack (default
            per optimiser: ``DEFAULT_ITERATIONS``). optimizers: per attack "lbfgs" or "adam" (defaults: the
            presets'). attack_overrides: further MatchingConfig overrides per attack.
        which, method: eigenvalues and solver for :func:`~.lavp.compute_proxies`; "min" needs
            ``method="dense"``. proxy_kwargs: further compute_proxies arguments (tol, maxiter, ...).
        n_boot: bootstrap resamples for every interval.
        labels_known: the server gets the labels; False: the attacks and the proxies use iDLG-recovered ones.
        local_steps, local_eps, local_rules: the local analysis (``local_steps=0`` skips it).
        lpips: "auto" (use LPIPS if its weights are available offline), an LPIPSMetric, or None.
        progress: called with (stage, done, total) after each sample of each stage.
    """
    from ..data import load_dataset
    from ..models.registry import ModelSpec, build_model
    from ..threat import Client, DataSpec, ServerKnowledge

    t_start = time.perf_counter()
    which = tuple(which)
    configs = check_validation_options(attacks=attacks, iterations=iterations, optimizers=optimizers,
                                       attack_overrides=attack_overrides, which=which, method=method,
                                       n_boot=n_boot, local_steps=local_steps, local_eps=local_eps,
                                       local_rules=local_rules, proxy_kwargs=proxy_kwargs)
    ds = load_dataset(dataset, root=data_root) if isinstance(dataset, str) else dataset
    if isinstance(model, str):
        spec = ModelSpec(model, ds.num_classes, ds.shape, dict(model_kwargs or {}), trust_code=trust_code)
    else:
        spec = model.trusted() if trust_code else model
    idx = list(range(min(16, len(ds)))) if indices is None else [int(i) for i in indices]
    if len(idx) < 3:
        raise ConfigError(f"a rank correlation needs at least 3 samples, got {len(idx)}")
    bad = [i for i in idx if not 0 <= i < len(ds)]
    if bad:
        raise ConfigError(f"index {bad[0]} is out of range for a dataset of {len(ds)} samples")
    lp, lpips_status = _lpips(lpips)
    report = progress or (lambda stage, done, total: None)
    torch.manual_seed(seed)
    victim = build_model(spec)
    images, labels = ds.batch(idx)
    client = Client(victim, spec, DataSpec(ds.name, tuple(ds.mean), tuple(ds.std)),
                    knowledge=ServerKnowledge(labels=labels_known), seed=seed)
    observations = [client.share(images[k:k + 1], labels[k:k + 1]) for k in range(len(idx))]
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()  # proxies (the same model: the client never modifies the server's copy)
    pkw = {"seed": seed, **dict(proxy_kwargs or {})}
    table = compute_proxies(victim, images, labels if labels_known else None,
                            observations=None if labels_known else observations, data=ds, indices=idx,
                            which=which, method=method, **pkw,
                            progress=lambda done, total: report("proxies", done, total))
    seconds["proxies"] = time.perf_counter() - t0
    rows = [dict(r, true_label=int(labels[k])) for k, r in enumerate(table.rows)]  # in the input order
    seconds.update(_attack_samples(rows, configs, observations, images, labels, lp, seed, report))
    local = _local_analysis(rows, victim, spec, ds, images, local_steps, local_eps, local_rules, seed, report)
    seconds["local"] = local["seconds"]
    _min_over_max(rows)
    corr = _correlations(rows, configs, local, lp, n_boot, seed)
    meta = _validation_meta(ds, spec, idx, seed, labels_known, configs, method, which, table, lpips_status,
                            n_boot, local_steps, local_eps, local_rules, local)
    meta["seconds"] = {**seconds, "total": time.perf_counter() - t_start}
    return ValidationResult(rows, corr, meta)


def _attack_samples(rows, configs, observations, images, labels, lp, seed, report) -> dict[str, float]:
    """Attack every sample with every configured attack; its scores go into its row. Returns the times."""
    from ..attacks import build_attack
    from ..metrics import score_reconstruction

    seconds = {}
    for a, (preset, ov) in configs.items():
        t0 = time.perf_counter()
        attack = build_attack(preset, seed=seed, **ov)
        for k, obs in enumerate(observations):
            rec = attack.reconstruct(obs)
            s = score_reconstruction(rec.images, images[k:k + 1], true_labels=labels[k:k + 1],
                                     predicted_labels=rec.labels, lpips=lp)
            rows[k].update({f"{a}_mse": s.mse[0], f"{a}_psnr": s.psnr[0], f"{a}_ssim": s.ssim[0],
                            f"{a}_lpips": s.lpips[0] if s.lpips is not None else float("nan"),
                            f"{a}_label_accuracy": s.label_accuracy, f"{a}_matching_loss": rec.matching_loss,
                            f"{a}_seconds": rec.seconds})
            report(f"attack {a}", k + 1, len(observations))
        seconds[f"attack_{a}"] = time.perf_counter() - t0
    return seconds


def _local_analysis(rows, victim, spec, ds, images, local_steps, local_eps, local_rules, seed, report) -> dict:
    """The worst-case local analysis: plain gradient descent from x* + eps z with a step from the proxy
    (``own``: 1 / lambda_max of the sample) or one step for all (``common``: 1 / the largest lambda_max).
    Its errors go into the rows; returns what ran (losses, rules, common steps, seconds)."""
    from ..proxies.hessian import GradientMap

    losses = [l for l in ("l2", "cosine") if f"{l}_max" in rows[0]]
    out = {"losses": losses, "rules": list(local_rules), "steps_common": {}, "seconds": 0.0, "ran": False}
    if not (local_steps > 0 and local_rules and losses):
        return out
    t0 = time.perf_counter()
    gmap = GradientMap.from_source(victim, dtype=torch.float64, input_shape=spec.input_shape)
    xs = ds.normalize(images).to(torch.float64)
    ys = torch.tensor([r["label"] for r in rows])  # the label the proxies used (given or recovered)
    z = torch.randn(gmap.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for loss in losses:
        out["steps_common"][loss] = 1.0 / float(np.nanmax([r[f"{loss}_max"] for r in rows]))
    done, total = 0, len(rows) * len(losses) * len(local_rules)
    for k, row in enumerate(rows):
        for loss in losses:
            for rule in local_rules:
                lam = row[f"{loss}_max"]
                eta = out["steps_common"][loss] if rule == "common" else (1.0 / lam if lam > 0 else 0.0)
                res = local_descent(gmap, xs[k], ys[k], loss, z, eps=local_eps, steps=local_steps, step_size=eta)
                row[f"local_{loss}_{rule}_err"] = res["err"]
                row[f"local_{loss}_{rule}_loss_ratio"] = res["loss_ratio"]
                done += 1
                report("local", done, total)
    out.update(seconds=time.perf_counter() - t0, ran=True)
    return out


def _min_over_max(rows) -> None:
    """lambda_min / lambda_max per loss, where both were computed."""
    for loss in ("l2", "cosine"):
        if f"{loss}_min" in rows[0]:
            for r in rows:
                mx, mn = r[f"{loss}_max"], r[f"{loss}_min"]
                r[f"{loss}_min_over_max"] = mn / mx if mx > 0 else float("nan")


def _correlations(rows, configs, local, lp, n_boot, seed) -> list[dict]:
    """Spearman of every proxy with every attack metric, and with the local analysis's remaining error."""
    proxies = [p for p in PROXY_COLUMNS if p in rows[0]]
    corr: list[dict] = []
    for a in configs:
        for m in [m for m in METRICS if m != "lpips" or lp is not None]:
            q = oriented_quality(m, [r[f"{a}_{m}"] for r in rows])
            corr += correlate(rows, proxies, q, study="attack", attack=a, metric=m, orientation=QUALITY_SIGN[m],
                              n_boot=n_boot, seed=seed)
    if local["ran"]:
        for loss in local["losses"]:
            extra = [f"{loss}_min_over_max"] if f"{loss}_min_over_max" in rows[0] else []
            for rule in local["rules"]:
                q = -np.array([r[f"local_{loss}_{rule}_err"] for r in rows], dtype=float)
                corr += correlate(rows, proxies + extra, q, study="local", attack=loss, metric=f"err_{rule}",
                                  orientation=-1, n_boot=n_boot, seed=seed)
    return corr


def _validation_meta(ds, spec, idx, seed, labels_known, configs, method, which, table, lpips_status, n_boot,
                     local_steps, local_eps, local_rules, local) -> dict:
    """The settings of a validation run (validation.json)."""
    kept = ("tol", "criterion", "maxiter", "bn_mode", "dim", "num_params", "fusion")
    return {
        "dataset": ds.name, "model": spec.to_dict(), "indices": idx, "n": len(idx), "seed": seed,
        "labels_known": labels_known,
        "attacks": {a: {"preset": p, **ov} for a, (p, ov) in configs.items()},
        "proxies": {"method": method, "which": list(which), **{k: v for k, v in table.meta.items() if k in kept}},
        "lpips": lpips_status,
        "orientation": "rho = Spearman(proxy, quality); quality = PSNR, SSIM as they are, -MSE, -LPIPS, and "
                       "-(remaining error) for the local analysis: rho > 0 means a larger proxy value went "
                       "with a better reconstruction",
        "bootstrap": {"n_boot": n_boot, "confidence": 0.95, "seed": seed, "kind": "percentile, pairs resampled"},
        "local": {"steps": local_steps, "eps": local_eps, "rules": list(local_rules), "losses": local["losses"],
                  "optimizer": "plain gradient descent, float64, no prior, no box",
                  "space": "normalised input", "noise": "x0 = x* + eps * z, z ~ N(0, I), the same z for all samples",
                  "common_step": local["steps_common"]},
        "torch_threads": torch.get_num_threads(),
    }
