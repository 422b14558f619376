"""The verdict of a deployment audit: which audited samples each defense leaves recognisable, at what cost.

For every candidate defense d and audited sample s, the **strongest attack** is the one whose reconstruction of
s (the image at position 0 of s's client batch, after the optimal assignment of the metrics) has the highest
PSNR; s counts as *rebuilt recognisably* under d when any attack's reconstruction of s reaches the deployment's
threshold (SSIM or PSNR, :class:`~.config.Threshold`). This is seed 002's rule (a defense is judged by its
strongest attack), applied per sample. A sample below the threshold is **inconclusive** when every attack that
reports its fit under-fit the update (:mod:`gradaudit.evaluation.fit`: it closed less than
:data:`~gradaudit.evaluation.fit.FIT_SHARE` of the way from a random guess to the private batch, in cosine
distance to the observed update): the attacks stopped short of explaining the update, so their low PSNR is a
lower bound on the leakage, not evidence that the defense works. It is inconclusive too when every such attack
under-fit or **recovered nothing** (:attr:`~gradaudit.evaluation.fit.UpdateFit.recovered_nothing`: it fit an
update that the defense left intact and is still no closer to the private batch than a flat image of the data's
mean colour), and at least one recovered nothing: other images explain the update as well, and the attacks could
not tell the batch apart from them. Where the update is **rough** (:attr:`~gradaudit.evaluation.fit.UpdateFit.rough`:
the private batch with a little noise is already about as far from it as a random guess, e.g. a fresh ResNet-18
at B = 1), the verdict says that more gradient matching will not settle the under-fit samples.

The **recommendation** is the candidate with the smallest utility loss (final training loss minus the
no-defense run's, both from the same victim through the same client path) among those that keep every audited
sample below the threshold with an attack that fit the update (none inconclusive), whose cells all finished,
whose training did not diverge and, for DP-SGD, whose epsilon after one shared update is within
``epsilon_budget``. When none qualifies, the verdict says so.

epsilon (DP-SGD, Abadi et al. 2016, RDP accounting through Opacus): one shared update is K local steps, each a
minibatch of b out of the client's n samples (sampling rate q = b / n, the usual Poisson approximation of a
shuffled epoch; q = 1 with full-batch steps); over R rounds with the same samples, K R steps at rate q.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from ...defenses.registry import parse_defense
from ...threat.local_training import LocalTraining
from ..store import CellRow, UtilityRow
from ..sweep import defense_label
from .config import Deployment


@dataclass
class SampleResult:
    """The strongest attack on one audited sample under one defense."""

    index: int
    role: str
    attack: Optional[str]
    psnr: Optional[float]
    ssim: Optional[float]
    recognisable: bool
    cell_key: Optional[str]
    images_path: Optional[str]
    assignment: list[int] = field(default_factory=list)
    by_attack: dict[str, float] = field(default_factory=dict)
    #: below the threshold only because every attack with a fit record under-fit the update
    underfit: bool = False
    #: the best fit among the attacks (:meth:`~gradaudit.evaluation.fit.UpdateFit.to_dict`), None if none reported
    fit: Optional[dict[str, Any]] = None
    #: below the threshold, every attack with a fit record under-fit or recovered nothing, and one recovered
    #: nothing (:attr:`~gradaudit.evaluation.fit.UpdateFit.recovered_nothing`)
    recovered_nothing: bool = False

    @property
    def inconclusive(self) -> bool:
        """Below the threshold without evidence of safety: the attacks under-fit, or fit and recovered nothing."""
        return self.underfit or self.recovered_nothing


@dataclass
class DefenseResult:
    label: str
    specs: list[str]
    samples: list[SampleResult]
    failed_cells: int
    final_train_loss: Optional[float] = None
    test_accuracy: Optional[float] = None
    utility_loss: Optional[float] = None
    accuracy_drop: Optional[float] = None
    diverged: bool = False
    epsilon: Optional[float] = None
    epsilon_rounds: Optional[float] = None

    @property
    def recognisable(self) -> int:
        return sum(s.recognisable for s in self.samples)

    @property
    def inconclusive(self) -> int:
        return sum(s.inconclusive for s in self.samples)

    @property
    def max_psnr(self) -> Optional[float]:
        vals = [s.psnr for s in self.samples if s.psnr is not None]
        return max(vals) if vals else None

    @property
    def max_ssim(self) -> Optional[float]:
        vals = [s.ssim for s in self.samples if s.ssim is not None]
        return max(vals) if vals else None

    @property
    def mean_psnr(self) -> Optional[float]:
        vals = [s.psnr for s in self.samples if s.psnr is not None]
        return sum(vals) / len(vals) if vals else None

    def row(self) -> dict[str, Any]:
        return {"defense": self.label, "recognisable": self.recognisable, "inconclusive": self.inconclusive,
                "audited": len(self.samples),
                "max_psnr": self.max_psnr, "mean_psnr": self.mean_psnr, "max_ssim": self.max_ssim,
                "final_train_loss": self.final_train_loss, "utility_loss": self.utility_loss,
                "test_accuracy": self.test_accuracy, "accuracy_drop": self.accuracy_drop,
                "epsilon": self.epsilon, "epsilon_rounds": self.epsilon_rounds, "failed_cells": self.failed_cells,
                "diverged": self.diverged}


@dataclass
class Verdict:
    deployment: str
    threshold: str
    audited: int
    defenses: list[DefenseResult]
    recommendation: Optional[DefenseResult]
    reasons: dict[str, str]
    attacks: list[str]
    fedavg_gain: Optional[dict[str, Any]] = None

    @property
    def baseline(self) -> DefenseResult:
        return self.defenses[0]

    def headline(self) -> str:
        b = self.baseline
        return (f"Without a defense, {b.recognisable} of {len(b.samples)} audited samples are rebuilt "
                f"recognisably ({self.threshold}; strongest attack, best PSNR "
                f"{_fmt(b.max_psnr, '.1f')} dB)." + _inconclusive_text(b))

    def recommendation_text(self) -> str:
        r = self.recommendation
        if r is None:
            return ("No candidate defense keeps every audited sample below the threshold within the limits "
                    f"(utility measured, epsilon budget): {'; '.join(f'{k}: {v}' for k, v in self.reasons.items())}.")
        if not r.specs:
            return ("No defense is required by this audit: without one, none of the audited samples is rebuilt "
                    "recognisably by the attacks tried. This bounds the leakage from below only: stronger "
                    "attacks (longer runs, a prior, a malicious server) may still succeed; see what was not tried.")
        eps = "" if r.epsilon is None else f", epsilon {r.epsilon:.3g} per update"
        return (f"Use {r.label}: it keeps all {len(r.samples)} audited samples below the threshold (best PSNR "
                f"{_fmt(r.max_psnr, '.1f')} dB, SSIM {_fmt(r.max_ssim, '.2f')}) at a utility loss of "
                f"{_fmt(r.utility_loss, '+.3f')} in training loss (test accuracy {_fmt(r.test_accuracy, '.1%')}"
                f"{eps}), the least among the candidates that do.")

    def lines(self) -> list[str]:
        out = [self.headline()]
        for d in self.defenses[1:]:
            out.append(f"With {d.label}: {d.recognisable} of {len(d.samples)} (best PSNR {_fmt(d.max_psnr, '.1f')}"
                       f" dB, utility loss {_fmt(d.utility_loss, '+.3f')}"
                       + ("" if d.epsilon is None else f", epsilon {d.epsilon:.3g}") + ")." + _inconclusive_text(d))
        out.append("Recommendation: " + self.recommendation_text())
        return out


def _inconclusive_text(d: DefenseResult) -> str:
    """The sentences on a defense's inconclusive samples ('' when there are none)."""
    out = ""
    under = [s for s in d.samples if s.underfit and s.fit]
    if under:
        worst = min(under, key=lambda s: s.fit["closed"])
        out += (f" {len(under)} of {len(d.samples)} inconclusive: the attacks did not fit the update (down to "
                f"{worst.fit['closed']:.0%} of the way from a random guess to the private batch; cosine distance "
                f"{worst.fit['reconstruction']:.2f} against {worst.fit['truth']:.2f}), so their low PSNR is a lower "
                f"bound on the leakage, not evidence of safety; a longer or stronger attack may rebuild them.")
        rough = [s for s in under if s.fit.get("rough")]
        if rough:
            out += (f" On {len(rough)} of them the update has no slope towards the batch (the private batch with a "
                    "little noise is already about as far from it as a random guess), so more gradient matching "
                    "will not settle them; an attack of another kind may.")
    blank = [s for s in d.samples if s.recovered_nothing and s.fit]
    if blank:
        out += (f" {len(blank)} of {len(d.samples)} inconclusive: the attacks fit the update and recovered nothing "
                f"(at best {max(s.psnr or float('-inf') for s in blank):.1f} dB, below a flat image of the data's "
                "mean colour), so other images explain the update as well and the attacks could not tell the "
                "batch from them; a stronger prior may.")
    return out


def _fmt(v: Optional[float], spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _target(cell: CellRow) -> tuple[Optional[float], Optional[float]]:
    scores = (cell.metrics or {}).get("scores") or {}
    psnr, ssim = scores.get("psnr") or [None], scores.get("ssim") or [None]
    return psnr[0], ssim[0]


def _sample_result(index: int, role: str, cells: list[CellRow], threshold) -> SampleResult:
    best: Optional[CellRow] = None
    recognisable, by_attack = False, {}
    for c in cells:
        p, s = _target(c)
        if p is not None:
            by_attack[c.attack] = p
        recognisable = recognisable or threshold.recognisable(p, s)
        if p is not None and (best is None or p > _target(best)[0]):
            best = c
    fits = [f for c in cells if (f := (c.metrics or {}).get("fit"))]
    fit = max(fits, key=lambda f: 1.0 if f.get("closed") is None else f["closed"]) if fits else None
    underfit = bool(fit) and not recognisable and all(f["underfit"] for f in fits)
    # one attack recovered nothing (so not every attack under-fit), and every other one under-fit or did too
    blank = (bool(fit) and not recognisable and any(f.get("recovered_nothing") for f in fits)
             and all(f["underfit"] or f.get("recovered_nothing") for f in fits))
    if best is None:
        return SampleResult(index, role, None, None, None, recognisable, None, None, by_attack=by_attack,
                            underfit=underfit, fit=fit, recovered_nothing=blank)
    p, s = _target(best)
    assignment = ((best.metrics or {}).get("scores") or {}).get("assignment") or []
    return SampleResult(index, role, best.attack, p, s, recognisable, best.key, best.images_path,
                        [int(a) for a in assignment], by_attack, underfit, fit, blank)


def dp_epsilon(dep: Deployment, specs: Sequence[str]) -> tuple[Optional[float], Optional[float]]:
    """(epsilon after one shared update, after ``utility.rounds`` rounds) of a chain with DP-SGD, else Nones."""
    dp = [t for t in (parse_defense(s) for s in specs) if getattr(t, "per_sample", False)]
    if not dp:
        return None, None
    c, n = dep.clients, dep.clients.samples
    if c.protocol == "fedsgd":
        steps, q = 1, 1.0
    else:
        lt = LocalTraining(c.local_lr, steps=c.local_steps, epochs=c.local_epochs, batch_size=c.local_batch_size)
        steps = lt.total_steps(n)
        q = min(1.0, c.local_batch_size / n) if lt.minibatched(n) else 1.0
    return dp[0].epsilon(steps, q), dp[0].epsilon(steps * dep.utility.rounds, q)


def _reason(d: DefenseResult, dep: Deployment) -> Optional[str]:
    if d.recognisable:
        return f"{d.recognisable} of {len(d.samples)} recognisable"
    if d.inconclusive:
        return (f"{d.inconclusive} of {len(d.samples)} inconclusive (the attacks under-fit the update, or fit it and "
                "recovered nothing)")
    if d.failed_cells:
        return f"{d.failed_cells} attack cells failed"
    if any(s.psnr is None for s in d.samples):
        return "not every audited sample was attacked"
    if d.diverged:
        return "training diverged"
    if d.utility_loss is None and d.specs:
        return "utility not measured"
    if d.epsilon is not None and dep.epsilon_budget is not None and d.epsilon > dep.epsilon_budget:
        return f"epsilon {d.epsilon:.3g} above the budget {dep.epsilon_budget:g}"
    return None


def fedavg_gain(defenses: list[DefenseResult]) -> Optional[dict[str, Any]]:
    """Mean target PSNR of the FedAvg-aware attack against the full-batch simplification, on the same updates."""
    pairs = [(s.by_attack["fedavg-leakage"], s.by_attack["inverting-gradients"]) for d in defenses
             for s in d.samples if "fedavg-leakage" in s.by_attack and "inverting-gradients" in s.by_attack]
    if not pairs:
        return None
    a = sum(p for p, _ in pairs) / len(pairs)
    b = sum(q for _, q in pairs) / len(pairs)
    return {"pairs": len(pairs), "fedavg_leakage_psnr": a, "full_batch_psnr": b, "gain_db": a - b,
            "wins": sum(p > q for p, q in pairs)}


def build_verdict(dep: Deployment, audited: list[int], roles: dict[int, str], cells: list[CellRow],
                  failed: list[CellRow], utility: list[Optional[UtilityRow]]) -> Verdict:
    """The verdict from the audit's stored cells (done and failed) and its utility rows (one per
    ``dep.defenses`` chain, in order; None where not measured)."""
    base_u = utility[0] if utility else None
    results = []
    for i, specs in enumerate(dep.defenses):
        label = defense_label(specs)
        mine = [c for c in cells if c.defense == label]
        samples = []
        for idx in audited:
            of_sample = [c for c in mine if ((c.config.get("data") or {}).get("indices") or [None])[0] == idx]
            samples.append(_sample_result(idx, roles.get(idx, "typical"), of_sample, dep.threshold))
        d = DefenseResult(label, list(specs), samples, sum(1 for c in failed if c.defense == label))
        u = utility[i] if i < len(utility) else None
        if u is not None:
            d.final_train_loss, d.test_accuracy = u.final_train_loss, u.test_accuracy
            d.diverged = bool(u.config.get("diverged_at_round")) or u.final_train_loss is None
            if base_u is not None and u.final_train_loss is not None and base_u.final_train_loss is not None:
                d.utility_loss = u.final_train_loss - base_u.final_train_loss
            if base_u is not None and u.test_accuracy is not None and base_u.test_accuracy is not None:
                d.accuracy_drop = base_u.test_accuracy - u.test_accuracy
        d.epsilon, d.epsilon_rounds = dp_epsilon(dep, specs)
        results.append(d)
    reasons = {d.label: r for d in results if (r := _reason(d, dep)) is not None}
    ok = [d for d in results if d.label not in reasons]
    recommendation = None
    if ok:
        recommendation = min(ok, key=lambda d: (bool(d.specs), d.utility_loss or 0.0, d.max_psnr or 0.0))
    attacks = sorted({c.attack for c in cells} | {c.attack for c in failed})
    return Verdict(dep.name, dep.threshold.describe(), len(audited), results, recommendation, reasons, attacks,
                   fedavg_gain(results))


__all__ = ["DefenseResult", "SampleResult", "Verdict", "build_verdict", "dp_epsilon", "fedavg_gain"]
