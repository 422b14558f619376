"""A systematic evaluation (seed 002, Eq. 3) as one YAML file: attacks x defenses x batch sizes x samples.

A sweep file is a :class:`SweepConfig`::

    base:                      # a RunConfig (data, model, threat, attack defaults, seed, device)
      data: {name: embedded, image_size: 16}
      model: {name: lenet}
      seed: 0
    attacks:                   # each: a preset plus overrides of its hyper-parameters
      - {preset: inverting-gradients, overrides: {iterations: 300}}
      - {preset: dlg, name: dlg-100, overrides: {iterations: 100}}
    defenses:                  # each entry is one combination of transforms; [] (or "none") = no defense
      - []
      - [prune:0.9]
      - [clip:4, noise:0.01]
      - ["dpsgd:1,1.1"]        # quoted: YAML splits an unquoted flow item at its comma
    batch_sizes: [1, 4]
    samples: 2                 # private batches per combination: sample s uses seed base.seed + s
    retries: 1                 # re-runs of a cell that raised, before it is recorded as failed
    timeout_s: 600             # per cell (optional)

:func:`expand` turns it into :class:`Cell` s, one per (attack, defense, batch size, sample). A cell's ``key`` is
the SHA-256 of the canonical JSON of its fully resolved :class:`~gradaudit.config.RunConfig`, so the same cell
gets the same key in every run (that is what makes a sweep resumable), and two different cells never share one.
:func:`validate_cells` checks every cell (names, sizes, device, data, model, defense compatibility) before any
attack runs.

Attack ``overrides`` keys are attack hyper-parameters (``iterations``, ``restarts``, ``lr``, ``distance``, ...,
the fields of ``attack`` in a run config), or dotted run-config keys (``threat.labels_known: true``,
``model.name: convnet``) for settings that belong to one attack only. The sweep's own axes (``defenses``,
``threat.batch_size``, ``seed``) cannot be overridden per attack. ``seeds``, when given, lists the seed of each
sample explicitly instead of ``base.seed + s``.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import AttackConfig, RunConfig, apply_overrides, parse_config, read_yaml_mapping, set_dotted
from ..defenses.registry import parse_defense
from ..errors import ConfigError, GradauditError

#: the defense label of a cell without any defense
NO_DEFENSE = "none"
#: separator of the transforms of one defense combination in its label
DEFENSE_JOIN = " + "
#: run-config keys that are axes of the sweep itself (attack overrides may not set them)
_AXES = ("defenses", "threat.batch_size", "seed")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class AttackEntry(_Strict):
    """One attack of the sweep: a preset, overrides of its hyper-parameters, and an optional display name."""

    preset: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    name: Optional[str] = None

    @property
    def label(self) -> str:
        return self.name or self.preset


def _defense_list(index: int, entry: Any) -> list[str]:
    if entry is None:
        return []
    if isinstance(entry, str):
        entry = [] if entry.strip().lower() == NO_DEFENSE else [entry]
    if not isinstance(entry, (list, tuple)):
        raise ConfigError(f"defenses[{index}]: each entry is a list of defense specs such as [prune:0.9] "
                          f"(or [] for no defense), got {entry!r}")
    out = []
    for spec in entry:
        try:
            out.append(parse_defense(spec).describe())
        except GradauditError as e:
            hint = ""
            if any(isinstance(x, (int, float)) and not isinstance(x, bool) for x in entry):
                hint = (" (YAML splits [dpsgd:1,1.1] at the comma: quote specs that contain one, "
                        "e.g. [\"dpsgd:1,1.1\"])")
            raise ConfigError(f"defenses[{index}]: {e}{hint}") from None
    return out


def spec_list(defense_specs: str | Sequence[str] | None) -> list[str]:
    """A defense chain as a list of specs: a list as given, or a label split at its `` + ``; ``none`` and empty
    entries dropped (ConfigError for anything that is not a string)."""
    if defense_specs is None:
        return []
    if isinstance(defense_specs, str):
        defense_specs = split_chain(defense_specs)
    out = []
    for s in defense_specs:
        if not isinstance(s, str):
            raise ConfigError(f"a defense is given as a 'name:strength' string, got {s!r}")
        if s.strip().lower() not in ("", NO_DEFENSE):
            out.append(s.strip())
    return out


def defense_label(specs: str | Sequence[str] | None) -> str:
    """The canonical label of one defense chain: ``"none"``, or each defense's ``describe()`` joined by `` + ``
    (any spelling of a spec gives the same label; invalid specs raise ConfigError)."""
    canonical = [parse_defense(s).describe() for s in spec_list(specs)]
    return DEFENSE_JOIN.join(canonical) if canonical else NO_DEFENSE


def split_chain(label: str) -> list[str]:
    """The inverse of :func:`defense_label`: ``"dpsgd:C=1,sigma=1.1 + prune:0.9"`` -> its specs (a ``+`` inside
    a number such as ``1e+06`` is kept); the parts keep their surrounding spaces."""
    return [p for p in re.split(r"\+(?=\s*[A-Za-z])", label) if p.strip()]


class SweepConfig(_Strict):
    """A systematic evaluation; see the module docstring. Use :func:`parse_sweep` / :func:`load_sweep`."""

    base: dict[str, Any] = Field(default_factory=dict)
    attacks: list[AttackEntry] = Field(default_factory=list)
    defenses: list[list[str]] = Field(default_factory=lambda: [[]])
    batch_sizes: list[int] = Field(default_factory=list)
    samples: Optional[int] = Field(default=None, ge=1)
    seeds: Optional[list[int]] = None
    #: explicit private batches (dataset indices of ``base.data``'s split), one sample each, instead of
    #: ``batch_sizes`` x ``samples`` drawn by seed (a deployment audit attacks the samples it ranked at risk)
    batches: Optional[list[list[int]]] = None
    retries: int = Field(default=1, ge=0)
    timeout_s: Optional[float] = Field(default=None, gt=0)

    @field_validator("base", mode="before")
    @classmethod
    def _base_none(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("attacks", "batch_sizes", mode="before")
    @classmethod
    def _not_empty(cls, v: Any, info) -> Any:
        if isinstance(v, (list, tuple)) and not v:
            raise ConfigError(f"{info.field_name} is an empty list: the sweep would have no cells (leave the key "
                              f"out to use the base's {'attack' if info.field_name == 'attacks' else 'batch size'})")
        return v

    @field_validator("defenses", mode="before")
    @classmethod
    def _defenses(cls, v: Any) -> Any:
        if v is None:
            return [[]]
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"defenses must be a list of defense combinations, got {v!r}")
        if not v:
            raise ConfigError("defenses is an empty list: the sweep would have no cells (list [] or none inside "
                              "it for the no-defense cell, e.g. defenses: [[], [prune:0.9]])")
        canonical = [_defense_list(i, entry) for i, entry in enumerate(v)]
        seen: dict[str, int] = {}
        for i, specs in enumerate(canonical):
            label = defense_label(specs)
            if label in seen:
                raise ConfigError(f"defenses[{i}] ({label}) repeats defenses[{seen[label]}]")
            seen[label] = i
        return canonical or [[]]

    @field_validator("batch_sizes")
    @classmethod
    def _batch_sizes(cls, v: list[int]) -> list[int]:
        bad = [b for b in v if b < 1]
        if bad:
            raise ConfigError(f"batch sizes must be >= 1, got {bad[0]}")
        if len(set(v)) != len(v):
            raise ConfigError(f"batch_sizes {v} lists a batch size twice")
        return v

    @model_validator(mode="after")
    def _check(self) -> "SweepConfig":
        try:
            base = parse_config(copy.deepcopy(self.base))
        except ConfigError as e:
            raise ConfigError(f"base: {e}") from None
        if base.defenses:
            raise ConfigError("base.defenses: list the defenses in the sweep's own 'defenses' entry, not in base")
        if self.seeds is not None:
            if not self.seeds:
                raise ConfigError("seeds: give at least one seed, or leave it out to use base.seed + sample")
            if len(set(self.seeds)) != len(self.seeds):
                raise ConfigError(f"seeds {self.seeds} lists a seed twice")
            if self.samples is not None and self.samples != len(self.seeds):
                raise ConfigError(f"samples is {self.samples} but seeds lists {len(self.seeds)} seeds")
            self.samples = len(self.seeds)
        elif self.samples is None:
            self.samples = 1
        if self.batches is not None:
            self._check_batches()
        if not self.batch_sizes:
            self.batch_sizes = [base.threat.batch_size]
        if not self.attacks:
            self.attacks = [AttackEntry(preset=base.attack.preset)]
        names: dict[str, int] = {}
        for i, a in enumerate(self.attacks):
            if a.label in names:
                raise ConfigError(f"attacks[{i}]: two attacks are called '{a.label}' (attacks[{names[a.label]}]); "
                                  "give each a distinct 'name'")
            names[a.label] = i
            for key in a.overrides:
                if key in _AXES or key.startswith("defenses"):
                    raise ConfigError(f"attacks[{i}] ({a.label}): '{key}' is an axis of the sweep; set it with "
                                      "the sweep's defenses / batch_sizes / samples / seeds instead")
        return self

    def _check_batches(self) -> None:
        if not self.batches or any(not b for b in self.batches):
            raise ConfigError("batches: give at least one non-empty batch of dataset indices")
        sizes = sorted({len(b) for b in self.batches})
        if self.batch_sizes and sorted(self.batch_sizes) != sizes:
            raise ConfigError("batches gives the private batches (their sizes too); leave batch_sizes out")
        if any(len(set(b)) != len(b) or min(b) < 0 for b in self.batches):
            raise ConfigError("batches: every batch lists distinct indices >= 0")
        if self.seeds is None and self.samples not in (1, len(self.batches)):
            raise ConfigError(f"samples is {self.samples} but batches lists {len(self.batches)} batches")
        if self.seeds is not None and len(self.seeds) != len(self.batches):
            raise ConfigError(f"seeds lists {len(self.seeds)} seeds for {len(self.batches)} batches")
        self.samples = len(self.batches)
        self.batch_sizes = sizes
        for i, a in enumerate(self.attacks):
            if any(k.startswith("data.indices") for k in a.overrides):
                raise ConfigError(f"attacks[{i}] ({a.label}): 'data.indices' is set by the sweep's batches")

    # ------------------------------------------------------------------ helpers
    def sample_seeds(self) -> list[int]:
        """The seed of every sample: ``seeds`` when given, else ``base.seed + s``."""
        if self.seeds is not None:
            return list(self.seeds)
        start = parse_config(copy.deepcopy(self.base)).seed
        return [start + s for s in range(self.samples or 1)]

    def resolved(self) -> dict[str, Any]:
        """The sweep with ``base`` fully resolved (every default written out) and canonical defense specs."""
        data = self.model_dump()
        data["base"] = parse_config(copy.deepcopy(self.base)).model_dump()
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.resolved(), sort_keys=False)


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: its resolved run config, stable key and labels."""

    key: str
    config: RunConfig
    attack: str
    defense: str
    batch_size: int
    sample: int
    seed: int

    @property
    def label(self) -> str:
        return f"{self.attack} / {self.defense} / B={self.batch_size} / sample {self.sample}"

    def config_dict(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")


def canonical_json(config: RunConfig) -> str:
    """The resolved config as sorted, compact JSON, without unset (None) options.

    Leaving out None keeps a cell's key unchanged when a later version adds an optional setting (whose unset
    value is None), so an old run folder still resumes; any value that is set is part of the key.
    """
    return json.dumps(config.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def cell_key(config: RunConfig) -> str:
    """SHA-256 (hex) of the canonical JSON of a fully resolved run config."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- parsing
def _model_at(loc: tuple, root: type[BaseModel] = None) -> type[BaseModel]:
    model: type[BaseModel] = root or SweepConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            break
        inner = _inner_model(field.annotation)
        if inner is None:
            break
        model = inner
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def format_validation_error(err: ValidationError, root: type[BaseModel], what: str) -> str:
    """One line for the first error of a pydantic validation: the key's dotted place, a did-you-mean for an
    unknown key (with the valid ones there), or the reason."""
    first = err.errors()[0]
    loc = tuple(first["loc"])
    where = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
    if first["type"] == "extra_forbidden":
        fields = list(_model_at(loc[:-1], root).model_fields)
        close = difflib.get_close_matches(str(loc[-1]), fields, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown {what} key '{where}'{hint}; valid here: {', '.join(fields)}"
    error = (first.get("ctx") or {}).get("error")
    if isinstance(error, GradauditError):
        return str(error)
    prefix = f"invalid {what} value for '{where}': " if where else f"invalid {what}: "
    return prefix + first["msg"]


def _format_error(err: ValidationError) -> str:
    return format_validation_error(err, SweepConfig, "sweep")


def parse_sweep(data: Any) -> SweepConfig:
    """Validate a sweep given as a dict; ConfigError (one line, with a suggestion for typos) on anything wrong."""
    if isinstance(data, SweepConfig):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"a sweep is a mapping with keys {', '.join(SweepConfig.model_fields)}")
    if not data:
        raise ConfigError(f"the sweep is empty; give at least its base and grid ({', '.join(SweepConfig.model_fields)})")
    try:
        return SweepConfig.model_validate(copy.deepcopy(data))
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """Read a sweep YAML file; ``overrides`` are dotted ``key=value`` strings (``base.attack.iterations=5``)."""
    data = read_yaml_mapping(path, what="sweep", allow_empty=False)
    return parse_sweep(apply_overrides(data, list(overrides or [])))


# ---------------------------------------------------------------------------------------------- expansion
def _attack_config(base: dict[str, Any], entry: AttackEntry, index: int) -> dict[str, Any]:
    """The run-config dict of one attack: base, the attack section merged, dotted overrides applied."""
    data = copy.deepcopy(base)
    base_attack = AttackConfig.model_validate(data.get("attack") or {}).model_dump(exclude_none=True)
    base_attack.pop("preset", None)
    section = {**base_attack, "preset": entry.preset}
    dotted = {}
    for key, value in entry.overrides.items():
        if "." in key:
            dotted[key] = value
        else:
            section[key] = copy.deepcopy(value)
    data["attack"] = section
    for key, value in dotted.items():
        try:
            set_dotted(data, key, copy.deepcopy(value))
        except ConfigError as e:
            raise ConfigError(f"attacks[{index}] ({entry.label}): {e}") from None
    return data


def _samples(sweep: SweepConfig, seeds: list[int]):
    """(batch size, sample, seed, indices or None) of every private batch of the sweep, in order."""
    if sweep.batches is not None:
        return [(len(b), s, seeds[s], b) for s, b in enumerate(sweep.batches)]
    return [(bs, s, seed, None) for bs in sweep.batch_sizes for s, seed in enumerate(seeds)]


def expand(sweep: SweepConfig | dict[str, Any]) -> list[Cell]:
    """Every cell of the sweep, in a fixed order (attack, defense, batch size, sample); no work is done."""
    sweep = parse_sweep(sweep)
    seeds = sweep.sample_seeds()
    cells: list[Cell] = []
    owners: dict[str, Cell] = {}
    for ai, entry in enumerate(sweep.attacks):
        attack_data = _attack_config(sweep.base, entry, ai)
        for specs in sweep.defenses:
            for bs, s, seed, indices in _samples(sweep, seeds):
                data = copy.deepcopy(attack_data)
                data["defenses"] = list(specs)
                data.setdefault("threat", {})
                if not isinstance(data["threat"], dict):
                    raise ConfigError("base.threat must be a mapping")
                data["threat"]["batch_size"] = bs
                data["seed"] = seed
                if indices is not None:
                    data.setdefault("data", {})["indices"] = list(indices)
                try:
                    config = parse_config(data)
                except ConfigError as e:
                    raise ConfigError(f"attacks[{ai}] ({entry.label}): {e}") from None
                cell = Cell(cell_key(config), config, entry.label, defense_label(specs), bs, s, seed)
                if cell.key in owners:
                    other = owners[cell.key]
                    raise ConfigError(f"attacks '{other.attack}' and '{cell.attack}' resolve to the same run "
                                      "config; remove one or change its overrides")
                owners[cell.key] = cell
                cells.append(cell)
    return cells


def validate_cells(cells: list[Cell], *, trust_code: bool = False) -> None:
    """Check everything about every cell that can be checked without attacking (what prepare() checks).

    Devices, attack presets and their overrides, datasets (loaded once per distinct data config), the private
    batch of every cell (batch size vs dataset size, explicit indices), models (built once per distinct
    architecture), and defenses that need a model property (DP-SGD refuses batch norm).
    """
    from ..attacks.registry import attack_threat, build_attack
    from ..data import load_dataset
    from ..threat.threat_model import ThreatModel, applies
    from ..models.layers import has_batchnorm
    from ..models.registry import ModelSpec, build_model
    from ..defenses.registry import defense_info
    from .cell import choose_indices, other_clients, resolve_device, split_defenses

    devices: dict[str, Any] = {}
    attacks: set[str] = set()
    datasets: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for cell in cells:
        cfg = cell.config
        try:
            if cfg.device not in devices:
                devices[cfg.device] = resolve_device(cfg.device)
            attack_key = json.dumps([cfg.attack.model_dump(mode="json"), cfg.device], sort_keys=True)
            if attack_key not in attacks:
                build_attack(cfg.attack.preset, device=devices[cfg.device], seed=cfg.seed, trust_code=trust_code,
                             **cfg.attack.overrides())
                attacks.add(attack_key)
            data_key = json.dumps(cfg.data.model_dump(mode="json", exclude={"indices"}), sort_keys=True)
            if data_key not in datasets:
                datasets[data_key] = load_dataset(cfg.data.name, root=cfg.data.root, split=cfg.data.split,
                                                  image_size=cfg.data.image_size, download=cfg.data.download)
            dataset = datasets[data_key]
            choose_indices(len(dataset), cfg.threat.batch_size, cfg.seed, cfg.data.indices)
            spec = ModelSpec(cfg.model.name, dataset.num_classes, dataset.shape, dict(cfg.model.kwargs),
                             trust_code=trust_code)
            model_key = json.dumps(spec.to_dict(), sort_keys=True, default=str)
            if model_key not in models:
                models[model_key] = build_model(spec)
            if cfg.model.weights is not None:
                from ..models.weights import check_weights, read_weights

                check_weights(models[model_key], read_weights(cfg.model.weights), spec.name, cfg.model.weights)
            per_sample = [s for s in cfg.defenses if defense_info(s).per_sample]
            if per_sample and has_batchnorm(models[model_key]):
                raise ConfigError(f"defense {per_sample[0]} needs {defense_info(per_sample[0]).needs}, which model "
                                  f"'{cfg.model.name}' (with batch norm) does not have; use a model without "
                                  "BatchNorm (lenet, mlp, convnet with model.kwargs.norm=none)")
            specs = [parse_defense(s) for s in cfg.defenses]
            _, secagg = split_defenses(specs)
            clients = 1 if secagg is None else secagg.num_clients
            fits, why = applies(attack_threat(cfg.attack.preset), ThreatModel(clients=clients), cfg.model.name,
                                cfg.threat.batch_size * clients)
            if not fits:
                raise ConfigError(f"attack '{cfg.attack.preset}' does not apply to this cell's threat model: {why}")
            other_clients(len(dataset), choose_indices(len(dataset), cfg.threat.batch_size, cfg.seed,
                                                       cfg.data.indices), secagg, cfg.seed)
        except GradauditError as e:
            raise type(e)(f"cell {cell.label}: {e}") from None
        except (ValueError, TypeError) as e:  # a model factory's own argument checks
            raise ConfigError(f"cell {cell.label}: {type(e).__name__}: {e}") from None


def plan(sweep: SweepConfig | dict[str, Any], *, trust_code: bool = False) -> list[Cell]:
    """:func:`expand` then :func:`validate_cells`: the cells of a sweep, all checked."""
    cells = expand(sweep)
    validate_cells(cells, trust_code=trust_code)
    return cells


__all__ = ["AttackEntry", "Cell", "NO_DEFENSE", "SweepConfig", "canonical_json", "cell_key", "defense_label",
           "expand", "load_sweep", "parse_sweep", "plan", "validate_cells"]

