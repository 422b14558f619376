"""The seam between a client's update and what the server observes: update transforms.

An :class:`UpdateTransform` maps the client's update (a dict of per-parameter tensors) to the update that is
actually sent. Transforms compose in order. Each states in its docstring what the attacker knows about it
(its type and strength are public: they are recorded in ``Observation.defenses``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class UpdateTransform(Protocol):
    def __call__(self, update: dict[str, torch.Tensor], generator: torch.Generator | None = None
                 ) -> dict[str, torch.Tensor]: ...

    def describe(self) -> str: ...


def fmt(x: float) -> str:
    """A strength as describe() writes it: short ('4', '0.01', '1e-05') unless that would lose precision."""
    short = f"{x:g}"
    return short if float(short) == x else repr(float(x))


# ------------------------------------------------------------------------------------------ declarations
@dataclass(frozen=True)
class DefenseInfo:
    """What a defense declares about itself where it is defined (:func:`register_defense`).

    Attributes:
        name: the spec name (``prune`` in ``prune:0.9``).
        family: the family it belongs to, in the field's words ("pruning", "differential privacy", ...).
        parameters: names of the spec's numbers, in order (``dpsgd:C,sigma[,delta]``).
        example: a valid spec, for messages.
        counts: how many numbers a spec may give.
        per_sample: it acts on per-sample gradients (the client computes them first), not on the mean update.
        acts_on: ``"update"`` (one client's update, applied by the client) or ``"aggregate"`` (combines the
            updates of several clients into what the server sees: secure aggregation).
        needs: what it requires of the model, in words ("" when nothing).
        strength: the parameter that measures its strength (for tables and plots).
    """

    name: str
    family: str
    parameters: tuple[str, ...]
    example: str
    counts: tuple[int, ...]
    per_sample: bool
    acts_on: str
    needs: str
    strength: str
    factory: Callable[..., Any] = field(repr=False, compare=False)


#: spec name -> declaration, filled by :func:`register_defense` as the defense modules are imported
DEFENSES: dict[str, DefenseInfo] = {}


def register_defense(name: str, *, family: str, parameters: Sequence[str], example: str,
                     counts: Sequence[int] | None = None, per_sample: bool = False, acts_on: str = "update",
                     needs: str = "", strength: str | None = None, **fixed: Any):
    """Class decorator: register the decorated defense under spec ``name`` (``fixed`` keyword arguments are
    bound, e.g. ``scope="global"`` for ``prune-global``)."""
    if acts_on not in ("update", "aggregate"):
        raise ValueError(f"acts_on must be 'update' or 'aggregate', got {acts_on!r}")

    def decorate(cls):
        factory = functools.partial(cls, **fixed) if fixed else cls
        DEFENSES[name] = DefenseInfo(name, family, tuple(parameters), example,
                                     tuple(counts) if counts else (len(parameters),), per_sample, acts_on, needs,
                                     strength or parameters[0], factory)
        return cls
    return decorate
