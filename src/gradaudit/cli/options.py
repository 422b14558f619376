"""Options several commands share, defined once: trust, legacy files, downloads, known/unknown."""

from __future__ import annotations

from enum import Enum

import typer

from ..trust import TRUST_FLAG


class Known(str, Enum):
    known = "known"
    unknown = "unknown"


def trust_option() -> bool:
    return typer.Option(False, TRUST_FLAG, help="Import and run a model or generator named as "
                        "package.module:factory (in options or in the files given). Off by default: gradaudit never "
                        "runs code that a file names unless you say you trust it.")


def legacy_option() -> bool:
    return typer.Option(False, "--allow-legacy", help="Read observations / checkpoints whose checksum does not "
                        "cover their metadata (older files); the output says what was not verified.")


def download_option() -> bool:
    return typer.Option(False, "--download", help="Fetch the dataset's official files when they are not found "
                        "(needs a network; Fashion-MNIST, CIFAR).")
