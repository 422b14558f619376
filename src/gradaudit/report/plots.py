"""Figures of the systematic evaluation (seed 002 Fig. 3), as PNG and SVG.

* :func:`privacy_utility_plot`: the reconstruction error of the strongest attack against the utility loss of the
  defense, one point per (defense, strength, batch size); colour = defense family, marker = batch size, the
  strength written next to each point, points of one family and batch size joined in order of strength.

  - y: RMSE of the strongest attack, err(D, s) = min over attacks of the mean per-cell RMSE, pixels in [0, 1]
    (seed 002 reports RMSE; higher = less was recovered = more private). Where a cell has no MSE it is derived
    from its PSNR (RMSE = 10^(-PSNR/20)).
  - x: utility loss = final training loss with the defense - final training loss without it (seed 002 Table 5);
    0 for no defense, higher = more utility lost.

  Up and to the left is better: more privacy for less utility.
* :func:`strongest_attack_plot`: PSNR of the strongest attack against defense strength, one panel per family,
  the no-defense level as a dashed line (available without any utility measurement).
* :func:`utility_curves_plot`: training loss per round of every utility run.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend switch, no display needed).
SVG text is kept as text (``svg.fonttype = none``), so the defense names are searchable in the file.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from ..checks import finite_or_none

Y_LABEL = "reconstruction RMSE of the strongest attack\n(pixels in [0, 1]; higher = more private)"
X_LABEL = "utility loss: final training loss − final training loss without defense"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")
NO_DEFENSE_COLOR = "#444444"
_RC = {"svg.fonttype": "none", "svg.hashsalt": "gradaudit", "font.size": 9}


def family_colors(families: Iterable[str]) -> dict[str, Any]:
    """A fixed colour per defense family (tab10 in sorted order; 'none' dark grey)."""
    cmap = matplotlib.colormaps["tab10"]
    others = sorted({f for f in families if f != "none"})
    colors = {f: cmap(i % 10) for i, f in enumerate(others)}
    colors["none"] = NO_DEFENSE_COLOR
    return colors


def batch_markers(batch_sizes: Iterable[int]) -> dict[int, str]:
    return {b: MARKERS[i % len(MARKERS)] for i, b in enumerate(sorted(set(batch_sizes)))}


def _is_finite(v: Any) -> bool:
    return finite_or_none(v) is not None


def _get(p: Any, name: str) -> Any:
    return p.get(name) if isinstance(p, dict) else getattr(p, name)


def _save(fig: Figure, stem: Path) -> dict[str, Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    out = {}
    with matplotlib.rc_context(_RC):
        for ext in ("png", "svg"):
            path = stem.with_suffix(f".{ext}")
            fig.savefig(path, format=ext, dpi=150, bbox_inches="tight", metadata={"Date": None} if ext == "svg"
                        else None)
            out[ext] = path
    return out


def _strength_order(p: Any) -> tuple:
    v = _get(p, "strength_value")
    return (v if _is_finite(v) else math.inf, str(_get(p, "strength")))


def privacy_utility_plot(points: Sequence[Any], stem: str | Path,
                         title: str = "Privacy vs utility (strongest attack per defense)") -> Optional[dict[str, Path]]:
    """Write ``stem``.png and ``stem``.svg; None (nothing written) when no point has both coordinates.

    ``points``: :class:`~gradaudit.evaluation.analysis.PrivacyUtilityPoint` (or dicts with its fields).
    """
    pts = [p for p in points if _is_finite(_get(p, "utility_loss")) and _is_finite(_get(p, "rmse"))]
    if not pts:
        return None
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(7.5, 5.0))
        ax = fig.add_subplot()
        colors = family_colors(_get(p, "family") for p in pts)
        markers = batch_markers(_get(p, "batch_size") for p in pts)
        groups: dict[tuple[str, int], list[Any]] = defaultdict(list)
        for p in pts:
            groups[(_get(p, "family"), _get(p, "batch_size"))].append(p)
        for (family, b), members in sorted(groups.items()):
            members = sorted(members, key=_strength_order)
            xs = [_get(p, "utility_loss") for p in members]
            ys = [_get(p, "rmse") for p in members]
            if len(members) > 1:
                ax.plot(xs, ys, "-", color=colors[family], alpha=0.35, linewidth=1, zorder=1)
            ax.scatter(xs, ys, color=colors[family], marker=markers[b], s=46, edgecolors="black",
                       linewidths=0.5, zorder=3)
            for p, x, y in zip(members, xs, ys):
                text = _get(p, "strength") or ("no defense" if family == "none" else family)
                ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7,
                            color=colors[family])
        ax.axvline(0.0, color="#999999", linewidth=0.8, linestyle=":", zorder=0)
        ax.set_xlabel(X_LABEL)
        ax.set_ylabel(Y_LABEL)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        fam_handles = [Line2D([], [], marker="o", linestyle="", color=colors[f], markeredgecolor="black",
                              markeredgewidth=0.5, label=f) for f in sorted(colors) if f in {k[0] for k in groups}]
        leg1 = ax.legend(handles=fam_handles, title="defense", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                         frameon=False)
        ax.add_artist(leg1)
        b_handles = [Line2D([], [], marker=m, linestyle="", color="#bbbbbb", markeredgecolor="black",
                            markeredgewidth=0.5, label=f"B = {b}") for b, m in markers.items()]
        ax.legend(handles=b_handles, title="batch size", loc="lower left", bbox_to_anchor=(1.01, 0.0),
                  frameon=False)
        return _save(fig, Path(stem))


def strongest_attack_plot(rows: Sequence[Any], stem: str | Path) -> Optional[dict[str, Path]]:
    """PSNR of the strongest attack vs strength, one panel per defense family; None when there is nothing."""
    rows = [r for r in rows if _is_finite(_get(r, "psnr"))]
    families = sorted({_get(r, "family") for r in rows} - {"none"})
    if not rows:
        return None
    with matplotlib.rc_context(_RC):
        n = max(1, len(families))
        fig = Figure(figsize=(min(3.2 * n + 1.5, 16), 3.6))
        axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
        markers = batch_markers(_get(r, "batch_size") for r in rows)
        colors = family_colors(_get(r, "family") for r in rows)
        baseline = {_get(r, "batch_size"): _get(r, "psnr") for r in rows if _get(r, "family") == "none"}
        for ax, family in zip(axes, families or ["none"]):
            members = [r for r in rows if _get(r, "family") == family]
            by_b: dict[int, list[Any]] = defaultdict(list)
            for r in members:
                by_b[_get(r, "batch_size")].append(r)
            numeric = all(_is_finite(_get(r, "strength_value")) for r in members)
            labels = sorted({_get(r, "strength") for r in members}, key=lambda s: _strength_order(
                next(r for r in members if _get(r, "strength") == s)))
            for b, rs in sorted(by_b.items()):
                rs = sorted(rs, key=_strength_order)
                xs = [_get(r, "strength_value") if numeric else labels.index(_get(r, "strength")) for r in rs]
                ax.plot(xs, [_get(r, "psnr") for r in rs], marker=markers[b], color=colors[family],
                        markeredgecolor="black", markeredgewidth=0.5, label=f"B = {b}")
            positive = numeric and members and all(_get(r, "strength_value") > 0 for r in members)
            if positive and len(members) > 1:
                vals = [_get(r, "strength_value") for r in members]
                if max(vals) / min(vals) >= 10:
                    ax.set_xscale("log")
            if not numeric:
                ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
            for b, v in baseline.items():
                ax.axhline(v, color=NO_DEFENSE_COLOR, linestyle="--", linewidth=0.8)
                ax.text(0.99, v, f"none, B = {b}", transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                        fontsize=6, color=NO_DEFENSE_COLOR)
            ax.set_title(family if family != "none" else "no defense only")
            ax.set_xlabel("strength")
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel("PSNR of the strongest attack (dB)\n(dashed: no defense)")
        axes[-1].legend(loc="best", frameon=False, fontsize=7)
        fig.tight_layout()
        return _save(fig, Path(stem))


def utility_curves_plot(utility_rows: Sequence[Any], stem: str | Path) -> Optional[dict[str, Path]]:
    """Training loss per round of every utility run (``UtilityRow``s whose config holds a ``curve``)."""
    runs = [(u.defense, u.config.get("curve")) for u in utility_rows if u.config.get("curve")]
    if not runs:
        return None
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(6.5, 3.8))
        ax = fig.add_subplot()
        colors = family_colors(d.split(":")[0] for d, _ in runs)
        for i, (defense, curve) in enumerate(runs):
            pts = [(r, l) for r, l in curve if _is_finite(l)]
            if not pts:
                continue
            ax.plot([r for r, _ in pts], [l for _, l in pts], label=defense,
                    color=colors.get(defense.split(":")[0], None),
                    linestyle=("-", "--", ":", "-.")[i % 4], linewidth=1.2)
        ax.set_yscale("log")
        ax.set_xlabel("round")
        ax.set_ylabel("mean training loss (cross-entropy)")
        ax.set_title("Federated training with each defense")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=7)
        return _save(fig, Path(stem))
