"""``gradaudit observation inspect|validate|export`` as API functions: captured updates from any framework.

An observation is ``NAME.safetensors`` (tensors: ``parameter/<name>``, ``update/<name>``, ``buffer/<name>``,
optional ``labels`` and ``bn/<i>/mean|var``) plus ``NAME.json`` (format, version, model spec, data
normalisation, batch size, update kind, local steps and lr, what the server knows, defenses, extras, and one
checksum over both files). :func:`export_observation` builds one from weight files of any framework saved as
safetensors: the broadcast weights theta_0 and the client's returned weights theta_K (FedAvg style), or theta_0
and a gradient file (FedSGD style).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..checks import check_input_file, check_int, check_number, check_output_dir
from ..errors import ConfigError, ObservationError
from ..models.registry import ModelSpec, build_model
from ..threat.capture import captured_observation
from ..threat.observation import DataSpec, Observation


def _load_tensors(path: str | Path, what: str) -> dict:
    from safetensors.torch import load_file

    path = check_input_file(path, what)
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
        raise ObservationError(f"{path} is not a valid safetensors file: {' '.join(str(e).split())}") from None


def _numbers(values: Sequence[float] | str, what: str) -> tuple[float, ...]:
    if isinstance(values, str):
        try:
            values = [float(s) for s in values.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"{what} must be comma-separated numbers, got '{values}'") from None
    return tuple(check_number(v, what) for v in values)


def export_observation(out: str | Path, *, weights: str | Path, model: str, num_classes: int,
                       input_shape: Sequence[int] | str, batch_size: int, returned: str | Path | None = None,
                       gradient: str | Path | None = None, local_steps: int = 1, local_lr: float | None = None,
                       mean: Sequence[float] | str = (0.5, 0.5, 0.5), std: Sequence[float] | str = (0.5, 0.5, 0.5),
                       dataset: str = "unknown", trust_code: bool = False) -> tuple[Path, Path]:
    """Build an observation from safetensors weight files of another framework and save it as ``out``.

    Exactly one of ``returned`` (theta_K: a FedAvg update theta_0 - theta_K, needs ``local_lr``) or
    ``gradient`` (a FedSGD mean gradient) is given. Every tensor is checked against ``model`` before anything
    is written. Returns the (safetensors, json) paths."""
    if (returned is None) == (gradient is None):
        raise ConfigError("give exactly one of --returned (FedAvg theta_K) or --gradient (FedSGD)")
    if isinstance(input_shape, str):
        try:
            input_shape = [int(s) for s in input_shape.split(",")]
        except ValueError:
            raise ConfigError(f"--input-shape needs C,H,W integers, got '{input_shape}'") from None
    shape = tuple(input_shape)
    if len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ConfigError(f"--input-shape needs C,H,W (three positive integers), got {shape}")
    mean_t, std_t = _numbers(mean, "--mean"), _numbers(std, "--std")
    check_int(num_classes, "--num-classes", 1)
    check_int(batch_size, "--batch-size", 1)
    check_int(local_steps, "--local-steps", 1)
    if returned is not None:
        if local_lr is None:
            raise ConfigError("--returned (FedAvg) needs --local-lr")
        check_number(local_lr, "--local-lr", positive=True)
    stem = Path(out)
    check_output_dir(stem.parent if str(stem.parent) else Path("."), "--out")
    spec = ModelSpec(model, num_classes, shape, trust_code=trust_code)
    net = build_model(spec)
    theta0 = _load_tensors(weights, "--weights")
    names = [k for k, _ in net.named_parameters()]
    buffers = {k: theta0[k] for k, _ in net.named_buffers() if k in theta0}
    params = {k: theta0[k] for k in names if k in theta0}
    obs = captured_observation(
        spec, DataSpec(dataset, mean_t, std_t), params, buffers, batch_size=batch_size,
        returned=_load_tensors(returned, "--returned") if returned is not None else None,
        gradient=_load_tensors(gradient, "--gradient") if gradient is not None else None,
        local_steps=local_steps, local_lr=local_lr)
    obs.check_model(net)
    return obs.save(out)


def inspect_observation(path: str | Path, *, allow_legacy: bool = False) -> tuple[Observation, list[dict[str, Any]]]:
    """The observation (verified) and one summary row per update tensor: name, shape, norm, max |u|, zeros %."""
    obs = Observation.load(path, allow_legacy=allow_legacy)
    rows = [{"tensor": name, "shape": "x".join(map(str, u.shape)), "norm": float(u.norm()),
             "max_abs": float(u.abs().max()) if u.numel() else 0.0,
             "zeros_percent": 100.0 * float((u == 0).float().mean()) if u.numel() else 0.0}
            for name, u in obs.update.items()]
    return obs, rows


def validate_observation(path: str | Path, *, trust_code: bool = False,
                         allow_legacy: bool = False) -> Observation:
    """Load (checksum, metadata types, finiteness) and check every tensor against the declared model, which is
    built only if it is registered or ``trust_code`` (:mod:`gradaudit.trust`)."""
    obs = Observation.load(path, trust_code=trust_code, allow_legacy=allow_legacy)
    obs.check_model(build_model(obs.model))
    return obs


__all__ = ["export_observation", "inspect_observation", "validate_observation"]
