"""``gradaudit utility --sweep``: the utility runs a sweep implies, so their rows join the sweep's cells."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import parse_config
from ..evaluation.sweep import SweepConfig, load_sweep, parse_sweep

#: the utility arguments a sweep supplies (and the run-config field each comes from)
SWEEP_FIELDS = {"dataset": ("data", "name"), "data_root": ("data", "root"), "model": ("model", "name"),
                "model_kwargs": ("model", "kwargs"), "protocol": ("threat", "protocol"),
                "local_steps": ("threat", "local_steps")}


def utility_from_sweep(sweep: str | Path | SweepConfig | dict, defenses: Sequence[str] = (),
                       explicit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:func:`gradaudit.evaluation.utility.store_utility` arguments for ``sweep``: its defense chains (then
    ``defenses`` not already among them), and its base's dataset, data root, model, model kwargs, protocol and
    local steps, except where ``explicit`` gives a value (options the user set on the command line)."""
    sw = load_sweep(sweep) if isinstance(sweep, (str, Path)) else parse_sweep(sweep)
    base = parse_config(dict(sw.base))
    chains = ["+".join(specs) for specs in sw.defenses if specs]
    out: dict[str, Any] = {"defenses": [*chains, *(d for d in defenses if d not in chains)]}
    for arg, (section, field) in SWEEP_FIELDS.items():
        value = getattr(getattr(base, section), field)
        out[arg] = dict(value) or None if arg == "model_kwargs" else value
    explicit = dict(explicit or {})
    if "model" in explicit and "model_kwargs" not in explicit:
        explicit["model_kwargs"] = None  # the sweep's kwargs belong to the sweep's model
    out.update(explicit)
    return out


__all__ = ["SWEEP_FIELDS", "utility_from_sweep"]
