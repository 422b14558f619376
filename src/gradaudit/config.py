"""Typed run configuration, validated before any work starts.

A YAML file is just the serialised form of :class:`RunConfig`; CLI overrides are dotted keys
(``attack.iterations=200``). Unknown keys are rejected with a suggestion for typos.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, GradauditError, unknown_name


class _Strict(BaseModel):
    #: unknown keys are refused, and so are inf / nan wherever a number is read
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataConfig(_Strict):
    name: str = "embedded"
    root: Optional[str] = None
    image_size: Optional[int] = Field(default=None, ge=4)
    split: str = "train"
    indices: Optional[list[int]] = None
    download: bool = False


class ModelConfig(_Strict):
    """The victim architecture (``name``, ``kwargs``) and, optionally, its weights: a safetensors state dict
    (``weights``) such as a model mid-training; without it the weights are a fresh initialisation from the seed."""

    name: str = "lenet"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: Optional[str] = None

    @field_validator("kwargs")
    @classmethod
    def _kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        _check_finite(v, "model.kwargs")
        return v


class ThreatConfig(_Strict):
    """What the client does and what the server knows. FedAvg clients take ``local_steps`` full-batch steps, or,
    with ``local_batch_size``, ``local_epochs`` passes over their data in minibatches in a private order;
    ``local_momentum`` / ``local_weight_decay`` as ``torch.optim.SGD`` (unset: 0; unset options stay out of a
    sweep cell's key, :func:`gradaudit.evaluation.sweep.canonical_json`)."""

    batch_size: int = Field(default=1, ge=1)
    protocol: Literal["fedsgd", "fedavg"] = "fedsgd"
    local_steps: int = Field(default=1, ge=1)
    local_lr: float = Field(default=0.01, gt=0)
    local_epochs: Optional[int] = Field(default=None, ge=1)
    local_batch_size: Optional[int] = Field(default=None, ge=1)
    local_momentum: Optional[float] = Field(default=None, ge=0, lt=1)
    local_weight_decay: Optional[float] = Field(default=None, ge=0)
    labels_known: bool = False
    bn_statistics_known: bool = False

    @model_validator(mode="after")
    def _local(self) -> "ThreatConfig":
        extra = [k for k in ("local_epochs", "local_batch_size", "local_momentum", "local_weight_decay")
                 if getattr(self, k) is not None]
        if self.protocol == "fedsgd" and extra:
            raise ValueError(f"threat.{extra[0]} describes FedAvg local training; set threat.protocol: fedavg")
        self.local_training()  # the combination is checked here, before any work
        return self

    def local_training(self):
        """The FedAvg clients' :class:`~gradaudit.threat.local_training.LocalTraining` (None for FedSGD)."""
        from .threat.local_training import LocalTraining

        if self.protocol == "fedsgd":
            return None
        return LocalTraining(self.local_lr, steps=self.local_steps, epochs=self.local_epochs or 1,
                             batch_size=self.local_batch_size, momentum=self.local_momentum or 0.0,
                             weight_decay=self.local_weight_decay or 0.0)

    def client_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :class:`~gradaudit.threat.Client` for this threat model's local training."""
        return {"protocol": self.protocol, "local_steps": self.local_steps, "local_lr": self.local_lr,
                "local_epochs": self.local_epochs or 1, "local_batch_size": self.local_batch_size,
                "momentum": self.local_momentum or 0.0, "weight_decay": self.local_weight_decay or 0.0}


class AttackConfig(BaseModel):
    """An attack preset and the hyper-parameters that override its defaults, flat::

        attack: {preset: inverting-gradients, iterations: 400, regularizers: {tv: 0.01}, tune: "off"}

    Which hyper-parameters exist, their types and bounds are the attack's own (found by introspection:
    :func:`gradaudit.attacks.registry.attack_schema`), so this schema never copies the attack's fields. A
    nested ``params:`` mapping is accepted too and merged into the top level. Unknown names (with a
    suggestion), wrong types, inf/nan and options only the caller may set are refused while parsing.
    """

    model_config = ConfigDict(extra="allow")

    preset: str = "inverting-gradients"

    @model_validator(mode="before")
    @classmethod
    def _flatten_params(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("tune"), bool):  # YAML reads a bare off / on as a bool
            data = {**data, "tune": "auto" if data["tune"] else "off"}
        if not isinstance(data, dict) or data.get("params") is None:
            return {k: v for k, v in data.items() if k != "params"} if isinstance(data, dict) else data
        params = data["params"]
        if not isinstance(params, dict):
            raise ConfigError(f"attack.params must be a mapping of hyper-parameters, got {params!r}")
        out = {k: v for k, v in data.items() if k != "params"}
        for k, v in params.items():
            if k in out:
                raise ConfigError(f"attack hyper-parameter '{k}' is given twice (as attack.{k} and in attack.params)")
            out[k] = v
        return out

    @model_validator(mode="after")
    def _check_params(self) -> "AttackConfig":
        from .attacks.registry import attack_names, attack_schema

        if self.preset not in attack_names():
            raise unknown_name("attack", self.preset, attack_names())
        given = dict(self.__pydantic_extra__ or {})
        for key in given:
            if key in _CALLER_ONLY:
                raise ConfigError(f"attack.{key} is not an attack hyper-parameter: it is the caller's choice (a "
                                  "command-line option or an API argument), never a config's")
            if key in ("device", "seed"):
                raise ConfigError(f"attack.{key} is not an attack hyper-parameter; set it at the top level of "
                                  f"the config ({key}: ...)")
        _check_finite(given, "attack")
        schema = attack_schema(self.preset)
        try:
            checked = schema.model_validate(given)
        except ValidationError as e:
            first = e.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            if first["type"] == "extra_forbidden":
                close = difflib.get_close_matches(key, list(schema.model_fields), n=1, cutoff=0.6)
                hint = f" (did you mean 'attack.{close[0]}'?)" if close else ""
                raise ConfigError(f"unknown config key 'attack.{key}'{hint}; attack '{self.preset}' takes: "
                                  f"{', '.join(schema.model_fields)}") from None
            raise ConfigError(f"invalid config value for 'attack.{key}': {first['msg']}") from None
        self.__pydantic_extra__ = {k: getattr(checked, k) for k in given if getattr(checked, k) is not None}
        return self

    def overrides(self) -> dict[str, Any]:
        """The hyper-parameters set (None ones are left out: the attack keeps its default)."""
        return dict(self.__pydantic_extra__ or {})

    def get(self, name: str, default: Any = None) -> Any:
        """A hyper-parameter's value when set, else ``default``."""
        return (self.__pydantic_extra__ or {}).get(name, default)


#: options only the caller may set (on the command line or in an API call), never a file
_CALLER_ONLY = ("trust_code", "allow_legacy")


def _check_finite(value: Any, where: str) -> None:
    """Refuse inf / nan anywhere inside a free-form value (dicts and lists are searched)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"invalid config value for '{where}': {value} (numbers must be finite)")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")


class RunConfig(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    threat: ThreatConfig = Field(default_factory=ThreatConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    defenses: list[str] = Field(default_factory=list)
    seed: int = 0
    device: str = "cpu"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", v):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got '{v}'")
        return v

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _known_keys(ann, prefix + name + ".")
    return keys


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    error = (first.get("ctx") or {}).get("error")
    if isinstance(error, GradauditError):  # our own validators' messages are already the one line to show
        return str(error)
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(loc, _known_keys(RunConfig), n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown config key '{loc}'{hint}"
    return f"invalid config value for '{loc}': {first['msg']}"


def parse_config(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set '{key}': '{p}' is not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML scalars/lists) to a config dict."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': cannot parse value: {yaml_error_line(e)}") from None
        set_dotted(data, key.strip(), value)
    return data


#: largest config / sweep file read (real ones are a few KB)
MAX_CONFIG_BYTES = 4 * 1024 * 1024


def yaml_error_line(e: yaml.YAMLError) -> str:
    """A YAML syntax error as one short line: what and where (line, column)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    what = getattr(e, "problem", None) or getattr(e, "context", None) or str(e).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{what}{where}"


def read_yaml_mapping(path: str | Path, what: str = "config", allow_empty: bool = True) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping; user errors become one-line ConfigErrors.

    Refused: a missing file or a folder, a file over 4 MiB, bytes that are not UTF-8 text, a YAML syntax
    error (its line and column are named), a top level that is not a mapping, and (``allow_empty=False``) an
    empty file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file not found: {p}" if not p.exists() else f"{what} '{p}' is not a file")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} file {p} is larger than {MAX_CONFIG_BYTES // 2**20} MiB; not a config")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} file {p} is not UTF-8 text (a binary file?)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {yaml_error_line(e)}") from None
    except RecursionError:
        raise ConfigError(f"{p} is nested too deeply") from None
    if data is None:
        if not allow_empty:
            raise ConfigError(f"{what} file {p} is empty")
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must contain a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    data: dict[str, Any] = {} if path is None else read_yaml_mapping(path)
    return parse_config(apply_overrides(data, overrides or []))
