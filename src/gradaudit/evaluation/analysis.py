"""From a results store to the systematic evaluation of defenses (seed 002 section 5, Eq. 3; methods.md section 6).

* :func:`strongest_attack_table`: for every defense D at strength s and batch size B, the strongest attack, i.e.
  err(D, s) = min over attacks A of the reconstruction error of A against D(s). An attack's score is the mean over
  the finished cells (samples x seeds) of that attack; the best attack is the one with the highest mean PSNR (or the
  chosen ``metric``). Every metric is also reported at its own optimum over attacks: the highest PSNR / SSIM, the
  lowest MSE, RMSE and LPIPS (LPIPS only where it was measured).
* :func:`privacy_utility_points`: joins those rows with the utility table: utility loss = final training loss with
  the defense - final training loss without (seed 002 Table 5), accuracy drop likewise; one point per (defense,
  strength, batch size), the points of seed 002 Fig. 3.
The tables are written by :mod:`gradaudit.report.tables` (Markdown and CSV; the columns are declared here).

A defense string is the ``describe()`` form the client records: ``none``, ``prune:0.9``, ``noise:0.01``,
``dpsgd:C=1,sigma=1.1``; a chain joins them with `` + `` (as the sweep writes them). :func:`parse_defense_label`
splits one into its family (``prune``) and strength (``0.9``).

Cells of different datasets or models are never pooled: rows are grouped by ``setting`` ("dataset/model", read
from each cell's config when it says), and utility rows are joined within the same setting.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

from ..defenses.registry import defense_strength
from ..errors import ConfigError, GradauditError
from .store import CellRow, ResultsStore, UtilityRow
from .sweep import NO_DEFENSE, split_chain

#: Metrics a row can be ranked by, and whether higher means a better reconstruction (more leakage).
METRICS: dict[str, bool] = {"psnr": True, "ssim": True, "mse": False, "rmse": False, "lpips": False}
#: Keys of a utility config that do not define the training setting (ignored when finding the baseline).
_NOT_SETTING = {"defense", "defenses", "curve", "train_images", "test_images"}


# --------------------------------------------------------------------------------------------- defense names
@dataclass(frozen=True)
class DefenseName:
    label: str            # as stored: "prune:0.9"
    family: str           # "prune" ("dpsgd + prune" for a chain, "none" for no defense)
    strength: str         # "0.9" ("C=1,sigma=1.1"; "" for none; "C=1,sigma=1.1 + 0.9" for a chain)
    value: Optional[float]  # the strength as a number where it is one (dpsgd: sigma), else None


def parse_defense_label(label: str) -> DefenseName:
    """Family and strength of a stored defense string, from the defenses' own declarations
    (:func:`gradaudit.defenses.registry.defense_strength`); labels no registered defense parses (written by
    another version) fall back to reading the text."""
    label = (label or "").strip()
    if label.lower() in ("", NO_DEFENSE):
        return DefenseName(NO_DEFENSE, NO_DEFENSE, "", None)
    parts = [p.strip() for p in split_chain(label)]
    families, strengths, values = [], [], []
    for part in parts:
        name, _, strength = part.partition(":")
        families.append(name.strip())
        strengths.append(strength.strip())
        try:
            values.append(defense_strength(part))
        except GradauditError:
            values.append(_strength_value(strength.strip()))
    if len(parts) == 1:
        return DefenseName(label, families[0], strengths[0], values[0])
    return DefenseName(label, " + ".join(families), " + ".join(strengths), None)


def _strength_value(text: str) -> Optional[float]:
    """A number from a strength text no registered defense parses (legacy labels)."""
    pairs = dict(p.split("=", 1) for p in text.split(",") if "=" in p)
    candidate = pairs.get("sigma") or next(iter(pairs.values()), None) if pairs else text.split(",")[0]
    try:
        return float(candidate)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------- cells -> rows
def _setting(config: dict[str, Any]) -> str:
    """'dataset/model' from a cell's or utility row's config ('' parts when it does not say)."""
    def name(section: str, flat: str) -> str:
        sec = config.get(section)
        if isinstance(sec, dict) and sec.get("name"):
            return str(sec["name"])
        if isinstance(config.get(flat), str):
            return str(config[flat])
        return ""
    ds, model = name("data", "dataset"), name("model", "model")
    return f"{ds}/{model}" if ds or model else ""


def _rmse(cell: CellRow) -> Optional[float]:
    if cell.mse is not None and math.isfinite(cell.mse) and cell.mse >= 0:
        return math.sqrt(cell.mse)
    if cell.psnr is not None and math.isfinite(cell.psnr):  # PSNR = -20 log10(RMSE) for pixels in [0, 1]
        return 10 ** (-cell.psnr / 20)
    return None


def _value(cell: CellRow, metric: str) -> Optional[float]:
    v = _rmse(cell) if metric == "rmse" else getattr(cell, metric)
    return float(v) if v is not None and math.isfinite(v) else None


def _mean(values: list[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


@dataclass
class AttackScore:
    """One attack against one (defense, batch size): means over its finished cells."""

    attack: str
    n: int
    psnr: Optional[float] = None
    ssim: Optional[float] = None
    mse: Optional[float] = None
    rmse: Optional[float] = None
    lpips: Optional[float] = None
    label_acc: Optional[float] = None
    #: cells whose reconstruction under-fit the update (:mod:`.fit`; their PSNR is a lower bound on the leakage)
    underfit: int = 0
    #: cells whose reconstruction fit an intact update and recovered nothing (:mod:`.fit`)
    recovered_nothing: int = 0


@dataclass
class StrongestRow:
    """The strongest attack against one defense at one strength and batch size (seed 002 Eq. 3)."""

    setting: str
    defense: str
    family: str
    strength: str
    strength_value: Optional[float]
    batch_size: int
    attack: str                      # the best attack by the table's metric
    n_samples: int                   # finished cells of that attack
    psnr: Optional[float]            # highest mean PSNR over attacks (dB)
    psnr_attack: Optional[str]
    ssim: Optional[float]            # highest mean SSIM
    mse: Optional[float]             # lowest mean MSE
    rmse: Optional[float]            # lowest mean RMSE (the error err(D, s) of the plot)
    rmse_attack: Optional[str]
    lpips: Optional[float]           # lowest mean LPIPS; None where it was not measured
    lpips_attack: Optional[str]
    label_acc: Optional[float]       # of the best attack
    n_attacks: int
    failed: int = 0                  # failed cells of this defense and batch size
    attacks: list[AttackScore] = field(default_factory=list)
    threat_model: str = ""           # the best attack's threat model (server, labels, BN, aggregation, update)
    underfit: int = 0                # cells of the best attack that under-fit the update (:mod:`.fit`)
    recovered_nothing: int = 0       # ... that fit an intact update and recovered nothing (:mod:`.fit`)


def _best(scores: list[AttackScore], metric: str) -> tuple[Optional[float], Optional[str]]:
    have = [(getattr(s, metric), s.attack) for s in scores if getattr(s, metric) is not None]
    if not have:
        return None, None
    higher = METRICS[metric]
    # ties: the attack that comes first by name, so the choice does not depend on row order
    value, attack = sorted(have, key=lambda t: ((-t[0] if higher else t[0]), t[1]))[0]
    return value, attack


def _sort_key(row) -> tuple:
    name = parse_defense_label(row.defense)
    return (row.setting, name.family != NO_DEFENSE, name.family,
            name.value if name.value is not None else math.inf, name.strength, row.batch_size)


def strongest_attack_table(store: ResultsStore, metric: str = "psnr") -> list[StrongestRow]:
    """One :class:`StrongestRow` per (setting, defense, batch size) with at least one finished cell."""
    if metric not in METRICS:
        raise ConfigError(f"unknown metric '{metric}'; valid: {', '.join(METRICS)}")
    groups: dict[tuple[str, str, int], dict[str, list[CellRow]]] = defaultdict(lambda: defaultdict(list))
    for cell in store.cells(status="done"):
        groups[(_setting(cell.config), cell.defense, cell.batch_size)][cell.attack].append(cell)
    failed: dict[tuple[str, str, int], int] = defaultdict(int)
    for cell in store.cells(status="failed"):
        failed[(_setting(cell.config), cell.defense, cell.batch_size)] += 1
    rows = []
    for (setting, defense, b), by_attack in groups.items():
        scores = []
        for attack in sorted(by_attack):
            cells = by_attack[attack]
            score = AttackScore(attack, len(cells))
            for m in ("psnr", "ssim", "mse", "rmse", "lpips", "label_acc"):
                setattr(score, m, _mean([v for c in cells if (v := _value(c, m)) is not None]))
            fits = [(c.metrics or {}).get("fit") or {} for c in cells]
            score.underfit = sum(1 for f in fits if f.get("underfit"))
            score.recovered_nothing = sum(1 for f in fits if f.get("recovered_nothing"))
            scores.append(score)
        _, best_attack = _best(scores, metric)
        if best_attack is None:  # the metric was never measured: rank by PSNR, else the first attack
            best_attack = _best(scores, "psnr")[1] or scores[0].attack
        best = next(s for s in scores if s.attack == best_attack)
        name = parse_defense_label(defense)
        psnr, psnr_attack = _best(scores, "psnr")
        rmse, rmse_attack = _best(scores, "rmse")
        lpips, lpips_attack = _best(scores, "lpips")
        rows.append(StrongestRow(
            setting=setting, defense=defense, family=name.family, strength=name.strength,
            strength_value=name.value, batch_size=b, attack=best_attack, n_samples=best.n, psnr=psnr,
            psnr_attack=psnr_attack, ssim=_best(scores, "ssim")[0], mse=_best(scores, "mse")[0], rmse=rmse,
            rmse_attack=rmse_attack, lpips=lpips, lpips_attack=lpips_attack, label_acc=best.label_acc,
            n_attacks=len(scores), failed=failed.get((setting, defense, b), 0), attacks=scores,
            threat_model=_threat_label(by_attack[best_attack]), underfit=best.underfit,
            recovered_nothing=best.recovered_nothing))
    return sorted(rows, key=_sort_key)


def _threat_label(cells: list[CellRow]) -> str:
    """The threat model of an attack's cells, as recorded by the cell (older stores: empty)."""
    labels = sorted({(c.metrics.get("threat_model") or {}).get("label", "") for c in cells} - {""})
    return "; ".join(labels)


# ------------------------------------------------------------------------------------------- best images
@dataclass
class BestCell:
    """The single best reconstruction (highest PSNR) of a defense at a batch size: the worst case to show."""

    setting: str
    defense: str
    batch_size: int
    cell: CellRow


def best_reconstructions(store: ResultsStore) -> list[BestCell]:
    """Per (setting, defense, batch size): the finished cell with the highest PSNR that has an images file."""
    best: dict[tuple[str, str, int], CellRow] = {}
    for cell in store.cells(status="done"):
        if not cell.images_path:
            continue
        key = (_setting(cell.config), cell.defense, cell.batch_size)
        score = cell.psnr if cell.psnr is not None and math.isfinite(cell.psnr) else -math.inf
        old = best.get(key)
        if old is None or score > (old.psnr if old.psnr is not None and math.isfinite(old.psnr) else -math.inf):
            best[key] = cell
    out = [BestCell(s, d, b, c) for (s, d, b), c in best.items()]
    return sorted(out, key=_sort_key)


# ------------------------------------------------------------------------------------------ utility join
@dataclass
class PrivacyUtilityPoint:
    """One point of the privacy-utility plot (seed 002 Fig. 3)."""

    setting: str
    defense: str
    family: str
    strength: str
    strength_value: Optional[float]
    batch_size: int
    attack: str
    rmse: Optional[float]            # of the strongest attack: the plot's y
    psnr: Optional[float]
    lpips: Optional[float]
    final_train_loss: Optional[float]
    baseline_train_loss: Optional[float]
    utility_loss: Optional[float]    # final_train_loss - baseline: the plot's x
    test_accuracy: Optional[float]
    baseline_accuracy: Optional[float]
    accuracy_drop: Optional[float]
    utility_key: Optional[str]


def _setting_of(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in _NOT_SETTING}


def _pick_utility(rows: list[UtilityRow], defense: str, setting: str, batch_size: int) -> Optional[UtilityRow]:
    """The utility row of ``defense`` in ``setting``.

    Among several (different training settings), prefer the one trained at ``batch_size``, then the training
    setting with the most defenses measured (the study's main one), then the latest.
    """
    cands = [u for u in rows if u.defense == defense and _compatible(setting, _setting(_utility_cfg(u)))]
    if not cands:
        return None
    popularity: dict[str, int] = defaultdict(int)
    for u in rows:
        popularity[_signature(u)] += 1
    ranked = sorted(enumerate(cands), key=lambda t: (t[1].config.get("batch_size") == batch_size,
                                                     popularity[_signature(t[1])], t[0]))
    return ranked[-1][1]


def _signature(u: UtilityRow) -> str:
    return json.dumps(_setting_of(_utility_cfg(u)), sort_keys=True, default=str)


def _compatible(a: str, b: str) -> bool:
    """Settings 'dataset/model' agree wherever both say something."""
    pa, pb = (a.split("/", 1) + [""])[:2], (b.split("/", 1) + [""])[:2]
    return all(x == y or not x or not y for x, y in zip(pa, pb))


def _utility_cfg(u: UtilityRow) -> dict[str, Any]:
    return {**u.config, "dataset": u.dataset, "model": u.model}


def _baseline(rows: list[UtilityRow], row: UtilityRow) -> Optional[UtilityRow]:
    """The no-defense run of the same training setting (same config apart from the defense)."""
    nones = [u for u in rows if parse_defense_label(u.defense).family == NO_DEFENSE]
    same = [u for u in nones if _setting_of(u.config) == _setting_of(row.config)]
    if same:
        return same[-1]
    loose = [u for u in nones if (u.dataset, u.model) == (row.dataset, row.model)]
    return loose[-1] if loose else None


def _diff(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a - b if a is not None and b is not None else None


def utility_losses(store: ResultsStore) -> list[dict[str, Any]]:
    """The utility table with each row's loss and accuracy relative to its no-defense baseline."""
    rows = store.utility()
    out = []
    for u in rows:
        base = _baseline(rows, u)
        out.append({"defense": u.defense, "dataset": u.dataset, "model": u.model,
                    "final_train_loss": u.final_train_loss, "test_accuracy": u.test_accuracy,
                    "utility_loss": _diff(u.final_train_loss, base.final_train_loss if base else None),
                    "accuracy_drop": _diff(base.test_accuracy if base else None, u.test_accuracy),
                    "rounds": u.config.get("rounds"), "batch_size": u.config.get("batch_size"),
                    "seconds": u.seconds, "key": u.key})
    return out


def privacy_utility_points(store: ResultsStore, metric: str = "psnr",
                           table: Optional[list[StrongestRow]] = None) -> list[PrivacyUtilityPoint]:
    """One point per (setting, defense, strength, batch size): strongest-attack error and utility cost.

    Utility fields are None where the defense's utility was not measured (or there is no no-defense run).
    """
    table = strongest_attack_table(store, metric) if table is None else table
    urows = store.utility()
    points = []
    for r in table:
        u = _pick_utility(urows, r.defense, r.setting, r.batch_size)
        base = _baseline(urows, u) if u is not None else None
        points.append(PrivacyUtilityPoint(
            setting=r.setting, defense=r.defense, family=r.family, strength=r.strength,
            strength_value=r.strength_value, batch_size=r.batch_size, attack=r.attack, rmse=r.rmse, psnr=r.psnr,
            lpips=r.lpips, final_train_loss=u.final_train_loss if u else None,
            baseline_train_loss=base.final_train_loss if base else None,
            utility_loss=_diff(u.final_train_loss if u else None, base.final_train_loss if base else None),
            test_accuracy=u.test_accuracy if u else None, baseline_accuracy=base.test_accuracy if base else None,
            accuracy_drop=_diff(base.test_accuracy if base else None, u.test_accuracy if u else None),
            utility_key=u.key if u else None))
    return points


# ------------------------------------------------------------------------------------------------ tables
#: (column header, field, format) of the strongest-attack table.
STRONGEST_COLUMNS: list[tuple[str, str, str]] = [
    ("setting", "setting", "s"), ("defense", "defense", "s"), ("family", "family", "s"),
    ("strength", "strength", "s"), ("B", "batch_size", "d"), ("strongest attack", "attack", "s"),
    ("PSNR (dB, max)", "psnr", ".2f"), ("SSIM (max)", "ssim", ".3f"), ("RMSE (min)", "rmse", ".4f"),
    ("MSE (min)", "mse", ".5f"), ("LPIPS (min)", "lpips", ".3f"), ("label acc", "label_acc", ".2f"),
    ("n", "n_samples", "d"), ("under-fit", "underfit", "d"), ("fit, nothing", "recovered_nothing", "d"),
    ("attacks", "n_attacks", "d"),
    ("failed", "failed", "d"), ("threat model", "threat_model", "s"),
]
POINT_COLUMNS: list[tuple[str, str, str]] = [
    ("setting", "setting", "s"), ("defense", "defense", "s"), ("family", "family", "s"),
    ("strength", "strength", "s"), ("B", "batch_size", "d"), ("strongest attack", "attack", "s"),
    ("RMSE", "rmse", ".4f"), ("PSNR (dB)", "psnr", ".2f"), ("final train loss", "final_train_loss", ".4f"),
    ("utility loss", "utility_loss", "+.4f"), ("test acc", "test_accuracy", ".3f"),
    ("acc drop", "accuracy_drop", "+.3f"),
]
UTILITY_COLUMNS: list[tuple[str, str, str]] = [
    ("defense", "defense", "s"), ("dataset", "dataset", "s"), ("model", "model", "s"),
    ("final train loss", "final_train_loss", ".4f"), ("utility loss", "utility_loss", "+.4f"),
    ("test acc", "test_accuracy", ".3f"), ("acc drop", "accuracy_drop", "+.3f"), ("rounds", "rounds", "s"),
    ("B", "batch_size", "s"), ("seconds", "seconds", ".1f"),
]
