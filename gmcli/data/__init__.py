"""Data sets held in memory: splits, named sources, IDX and image folders.

``load_dataset(name, ...)`` returns a ``DataBundle`` (train, val, test splits,
class names, input shape, train-split normalisation); ``load_idx_folder`` and
``load_image_folder`` read new inputs for detection; ``convert_to_shape`` fits
them to a model's input shape.
"""

from __future__ import annotations

from gmcli.data.augment import AUGMENTATIONS
from gmcli.data.base import SPLITS, DataBundle, Split, channel_stats
from gmcli.data.convert import convert_to_shape
from gmcli.data.idx import load_idx_folder, read_idx
from gmcli.data.images import IMAGE_EXTENSIONS, load_image_folder
from gmcli.data.sources import DATASETS, load_dataset

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "DataBundle",
    "Split",
    "channel_stats",
    "convert_to_shape",
    "load_dataset",
    "load_idx_folder",
    "load_image_folder",
    "read_idx",
]
