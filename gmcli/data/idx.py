"""IDX files (the MNIST / Fashion-MNIST format), gzipped or not.

Format (big-endian): two zero bytes, a dtype code, the number of dimensions
``ndim``, then ``ndim`` uint32 sizes, then the values in C order.
See http://yann.lecun.com/exdb/mnist/ ("THE IDX FILE FORMAT").
"""

from __future__ import annotations

import gzip
import logging
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from gmcli.data.base import Split
from gmcli.errors import GmcliError

logger = logging.getLogger(__name__)

# IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

# The standard file names of the MNIST family: (images, labels) per official split.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when the file starts with the gzip magic."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise GmcliError(f"IDX file {path}: cannot read it ({exc})") from exc


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file into a numpy array of native byte order.

    Args:
        path: an IDX file, plain or gzipped (detected from its first bytes).

    Returns:
        an array whose shape is the file's dimensions.

    Raises:
        GmcliError: naming the file when it is not IDX (magic), uses an unknown
            dtype code, or holds a number of bytes that does not match its header.
    """
    path = Path(path)
    data = _read_bytes(path)

    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise GmcliError(
            f"IDX file {path}: not an IDX file (magic bytes {data[:4].hex(' ') or 'none'}, "
            "expected 00 00 <dtype code> <ndim>)"
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        codes = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise GmcliError(f"IDX file {path}: unknown dtype code 0x{code:02X}; accepted: {codes}")

    header = 4 + 4 * ndim
    if len(data) < header:
        raise GmcliError(
            f"IDX file {path}: truncated header ({len(data)} bytes, {ndim} dimensions "
            f"need {header})"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))

    dtype = np.dtype(IDX_DTYPES[code])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise GmcliError(
            f"IDX file {path}: {len(data)} bytes, but its header {dims} of {dtype.name} "
            f"needs {expected} (truncated or not an IDX file)"
        )
    values = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return values.astype(dtype.newbyteorder("="))


def find_idx_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists (plain first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx_pair(images_path: Path, labels_path: Path) -> Split:
    """Images (N, H, W) uint8 and labels (N,) from two IDX files, as a Split (N, 1, H, W)."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise GmcliError(
            f"IDX file {images_path}: expected uint8 images of 3 dimensions (N, H, W), "
            f"got {images.dtype.name} of shape {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise GmcliError(
            f"IDX file {labels_path}: expected integer labels of 1 dimension (N,), "
            f"got {labels.dtype.name} of shape {labels.shape}"
        )
    if labels.shape[0] != images.shape[0]:
        raise GmcliError(
            f"IDX files {images_path} and {labels_path}: {images.shape[0]} images "
            f"but {labels.shape[0]} labels"
        )
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return Split(x, y)


def load_idx_split(folder: Path, split: str) -> Split:
    """The official ``split`` ("train" or "test") of an MNIST-style folder.

    Raises:
        GmcliError: naming the folder and the expected file names when one is missing.
    """
    found = [find_idx_file(folder, name) for name in IDX_FILES[split]]
    if None in found:
        expected = [f"{name}[.gz]" for pair in IDX_FILES.values() for name in pair]
        missing = [name for name, path in zip(IDX_FILES[split], found) if path is None]
        raise GmcliError(
            f"data.root: folder {folder} lacks {', '.join(missing)}[.gz]; "
            f"expected the IDX files {', '.join(expected)}"
        )
    images_path, labels_path = found
    logger.debug("reading IDX %s split from %s and %s", split, images_path, labels_path)
    return read_idx_pair(images_path, labels_path)


def _pairs_in(folder: Path) -> list[tuple[Path, Path]]:
    """IDX (images, labels) pairs in a folder, test files first.

    A pair is ``<prefix>images<suffix>`` beside ``<prefix>labels<suffix>`` where
    the suffix may read ``idx3`` / ``idx1``, for instance the standard
    ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``.
    """
    pairs = []
    for images in sorted(folder.iterdir()):
        if "images" not in images.name or not images.is_file():
            continue
        label_name = images.name.replace("images", "labels").replace("idx3", "idx1")
        labels = folder / label_name
        if labels.is_file():
            pairs.append((images, labels))

    def rank(pair: tuple[Path, Path]) -> int:
        name = pair[0].name
        return 0 if name.startswith(("t10k", "test")) else 1

    return sorted(pairs, key=rank)


def load_idx_folder(root: str | Path) -> Split:
    """Images and labels from an IDX pair in a folder (the test pair when there is one).

    Args:
        root: a folder holding, for instance, ``t10k-images-idx3-ubyte.gz`` and
            ``t10k-labels-idx1-ubyte.gz``; any ``*images*`` file with its
            ``*labels*`` twin (``idx3`` -> ``idx1``) is accepted.

    Returns:
        a Split with x (N, 1, H, W) uint8 and y (N,) int64.
    """
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise GmcliError(f"IDX folder {folder}: not a folder")
    pairs = _pairs_in(folder)
    if not pairs:
        raise GmcliError(
            f"IDX folder {folder}: no images/labels pair found; expected for instance "
            "t10k-images-idx3-ubyte[.gz] with t10k-labels-idx1-ubyte[.gz]"
        )
    images, labels = pairs[0]
    logger.info("reading IDX pair %s, %s", images.name, labels.name)
    return read_idx_pair(images, labels)
