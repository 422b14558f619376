"""No code from data: a ``package.module:factory`` name is imported and called only when the user trusts it.

An audit is pointed at files other people made (captured observations, checkpoints, configs, sweeps). Any of
them may name Python code: a model as ``package.module:factory``, a generator prior the same way. Importing
that module runs its top level, and calling the factory runs whatever it does (``"os:system"`` with
``{"command": ...}`` runs a shell). So a name of that form is refused unless the user says, outside the file,
that they trust it:

* on the command line with ``--trust-model-code``;
* in the API with ``trust_code=True`` (``build_model(spec, trust_code=True)``, ``Observation.load(path,
  trust_code=True)``, ``run_attack(config, trust_code=True)``, ``run_sweep(..., trust_code=True)``, ...), or by a
  :class:`~gradaudit.models.registry.ModelSpec` built with ``trust_code=True``.

Trust is never read from a file: no config, sweep or observation key can switch it on. While a trusted factory
runs, models it builds in turn (e.g. the ``base`` of a malicious ``imprint`` model) are trusted too
(:func:`trusting_code`). Registered names (``lenet``, ``resnet18``, ...) need no trust.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
from collections.abc import Iterator
from typing import Any, Callable

from .errors import ConfigError

TRUST_FLAG = "--trust-model-code"
_TRUSTED: contextvars.ContextVar[bool] = contextvars.ContextVar("gradaudit_trust_code", default=False)


class UntrustedCodeError(ConfigError):
    """A file or option names Python code (``package.module:factory``) that the user has not trusted."""


def is_code_reference(name: Any) -> bool:
    """True for a ``package.module:factory`` name (anything with a colon that is not a registered name)."""
    return isinstance(name, str) and ":" in name


def code_trusted(trust_code: bool = False) -> bool:
    """Whether code references may be imported now: ``trust_code`` or an enclosing :func:`trusting_code`."""
    return bool(trust_code) or _TRUSTED.get()


@contextlib.contextmanager
def trusting_code(trust_code: bool = True) -> Iterator[None]:
    """Within the block, code references are trusted when ``trust_code`` (or already trusted outside it)."""
    token = _TRUSTED.set(code_trusted(trust_code))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def refuse_untrusted(name: str, what: str, trust_code: bool = False) -> None:
    """Raise :class:`UntrustedCodeError` when ``name`` is a code reference and code is not trusted; no import."""
    if is_code_reference(name) and not code_trusted(trust_code):
        raise UntrustedCodeError(
            f"{what} '{name}' names Python code (package.module:factory), which gradaudit imports and runs only "
            f"when you trust it: pass {TRUST_FLAG} on the command line (API: trust_code=True)")


def load_code_reference(target: str, what: str, trust_code: bool = False) -> Callable[..., Any]:
    """The callable ``factory`` of ``package.module:factory``, imported only when trusted (see the module doc)."""
    refuse_untrusted(target, what, trust_code)
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"a user {what} is given as 'package.module:factory', got '{target}'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import module '{module_name}' for {what} '{target}': {e}") from None
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module '{module_name}' has no attribute '{attr}' ({what} '{target}')") from None
    if not callable(factory):
        raise ConfigError(f"{what} '{target}' is not callable")
    return factory


__all__ = ["TRUST_FLAG", "UntrustedCodeError", "code_trusted", "is_code_reference", "load_code_reference",
           "refuse_untrusted", "trusting_code"]
