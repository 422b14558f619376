"""Datasets: every loader returns an in-memory :class:`ImageDataset` (uint8 images + labels + normalisation).

Use :func:`load_dataset` with a name from :data:`DATASETS`; ``"embedded"`` (the default) works offline.
"""

from gradaudit.data.base import CorruptDataError, ImageDataset
from gradaudit.data.registry import DATASETS, DEFAULT_DATASET, load_dataset

__all__ = ["DATASETS", "DEFAULT_DATASET", "CorruptDataError", "ImageDataset", "load_dataset"]
