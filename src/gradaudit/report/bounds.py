"""The two-layer bounds experiment's files and figure (the experiment is :mod:`gradaudit.theory.two_layer`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..theory.two_layer import AXES, METRICS, BoundsResult, config_dict
from .tables import write_dict_csv


def write_bounds(result: BoundsResult, out: str | Path) -> dict[str, Path]:
    """bounds.csv (every point), exponents.csv, bounds.json (config, timing) and bounds.png into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"points": out / "bounds.csv", "exponents": out / "exponents.csv", "settings": out / "bounds.json",
             "plot": out / "bounds.png"}
    write_dict_csv(paths["points"], result.rows, list(result.rows[0]))
    write_dict_csv(paths["exponents"], result.exponents,
                   ["axis", "error", "exponent", "r2", "agrees", "seed says", "note"])
    paths["settings"].write_text(json.dumps({"config": config_dict(result.config), "seconds": result.seconds},
                                            indent=2))
    plot_bounds(result, paths["plot"])
    return paths


FLOOR = 1e-3


def plot_bounds(result: BoundsResult, path) -> None:
    """One panel per axis: mean error (+- std over seeds) per subspace estimate and metric, log-log where the
    axis has an exponent; the dropout panel overlays the undefended errors at width m (x = (1-p) m)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = [f"{metric}/{sub}" for sub in result.config.subspaces for metric in METRICS]
    fig = Figure(figsize=(15, 8.5))
    FigureCanvasAgg(fig)
    labels = {"d": "feature dimension d", "m": "width m", "B": "batch size B",
              "dropout": "effective width (1-p) m (dropout p)", "noise": "noise sigma (x rms of the gradient)",
              "prune": "pruning ratio p"}
    for i, axis in enumerate(AXES):
        ax = fig.add_subplot(2, 3, i + 1)
        rows = result.axis_rows(axis)
        if axis == "noise":
            rows = [r for r in rows if r["value"] > 0]
        xs = [r["effective_width"] if axis == "dropout" else r["value"] for r in rows]
        for j, k in enumerate(keys):
            ys = [max(r[k], FLOOR) for r in rows]
            err = [r[k + " std"] for r in rows]
            ax.errorbar(xs, ys, yerr=err, marker="o", ms=3, capsize=2, label=k, color=f"C{j}")
            if axis == "dropout":
                base = result.axis_rows("m")
                ax.plot([r["m"] for r in base], [max(r[k], FLOOR) for r in base], ls=":", color=f"C{j}")
        ax.plot(xs, [r["random"] for r in rows], color="grey", ls="--", label="random directions (span)")
        if axis != "prune":
            ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(labels[axis])
        ax.set_ylabel("feature reconstruction error")
        fits = [e for e in result.exponents if e["axis"] == axis and e["exponent"] is not None]
        title = axis + ": " + ", ".join(f"{e['error']} {e['exponent']:+.2f}" for e in fits[:2])
        ax.set_title(title if fits else axis + " (dotted: no defense at width m)" * (axis == "dropout"),
                     fontsize=9)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle("Tensor method on random two-layer nets (seed 002 Table 1 directions); dropout panel: dotted = "
                 f"no defense at that width; errors below {FLOOR:g} (exact spans) drawn at {FLOOR:g}", fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)

