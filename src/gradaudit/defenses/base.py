"""The seam between a client's update and what the server observes: update transforms.

An :class:`UpdateTransform` maps the client's update (a dict of per-parameter tensors) to the update that is
actually sent. Transforms compose in order. Each states in its docstring what the attacker knows about it
(its type and strength are public: they are recorded in ``Observation.defenses``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

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
