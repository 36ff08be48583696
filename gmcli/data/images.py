"""Folders of image files (PNG, JPEG, ...) decoded once with PIL into uint8 tensors.

Layout as torchvision's ``ImageFolder``: one subfolder per class
(``root/<class>/.../<image>``); images directly in ``root`` have no label (-1).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gmcli.data.base import Split
from gmcli.errors import GmcliError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff", ".webp",
)
ON_ERROR: tuple[str, ...] = ("skip", "fail")

# PIL modes read as one grey channel; every other mode is read as RGB (alpha dropped).
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden entries skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
    return found


def list_image_tree(root: Path) -> tuple[list[Path], list[str | None]]:
    """Image files under ``root`` and, for each, its class folder name (None at top level).

    Returns:
        ``(files, folder_names)``, both in a deterministic (sorted) order.
    """
    files: list[Path] = []
    owners: list[str | None] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found = _image_files(entry)
            files += found
            owners += [entry.name] * len(found)
        elif entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
            files.append(entry)
            owners.append(None)
    return files, owners


def _open(path: Path) -> Image.Image:
    """Open and fully decode one image (errors surface here, not later)."""
    with Image.open(path) as img:
        img.load()
        return img.copy()


def _to_array(img: Image.Image, channels: int, size: tuple[int, int]) -> np.ndarray:
    """One decoded image as uint8 (C, H, W) with ``channels`` and ``size`` = (H, W).

    16-bit and float grey images go through PIL's conversion to "L", which clips.
    """
    img = img.convert("L" if channels == 1 else "RGB")
    if (img.height, img.width) != size:
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(img, dtype=np.uint8)
    if channels == 1:
        return array[None]
    return array.transpose(2, 0, 1)


def decode_images(
    files: Sequence[Path],
    *,
    root: Path,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    on_error: str = "skip",
) -> tuple[torch.Tensor, list[int], list[str]]:
    """Decode image files into one uint8 tensor.

    Args:
        files: the image paths.
        root: the folder that skipped names are given relative to.
        channels: C, 1 (grey) or 3 (RGB); by default 1 when the first readable image
            is grey, else 3.
        size: (H, W) every image is resized to (bilinear); by default the size of
            the first readable image.
        on_error: "skip" (log a warning naming the file) or "fail" (GmcliError).

    Returns:
        ``(x, kept, skipped)``: x (M, C, H, W) uint8, the indices into ``files`` of
        the M decoded images, and the skipped files as paths relative to ``root``.
    """
    if on_error not in ON_ERROR:
        raise GmcliError(f"on_error: unknown value {on_error!r}; accepted: {', '.join(ON_ERROR)}")
    if channels not in (None, 1, 3):
        raise GmcliError(f"image channels: expected 1 or 3, got {channels!r}")

    arrays: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[str] = []
    for i, path in enumerate(files):
        try:
            img = _open(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            name = path.relative_to(root).as_posix()
            if on_error == "fail":
                raise GmcliError(f"image file {path}: cannot decode it ({exc})") from exc
            logger.warning("skipping unreadable image %s (%s)", name, exc)
            skipped.append(name)
            continue

        if channels is None:
            channels = 1 if img.mode in _GREY_MODES else 3
        if size is None:
            size = (img.height, img.width)
            logger.info("image size %s taken from the first image, %s", size, path)
        arrays.append(_to_array(img, channels, size))
        kept.append(i)

    if not arrays:
        raise GmcliError(
            f"image folder {root}: none of its {len(files)} image files could be decoded"
        )
    return torch.from_numpy(np.stack(arrays)), kept, skipped


def read_image_tree(
    root: Path,
    *,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    on_error: str = "skip",
    classes: Sequence[str] | None = None,
) -> tuple[Split, list[str], list[str]]:
    """Decode a class-per-subfolder tree.

    Args:
        root: the folder.
        channels, size, on_error: see ``decode_images``.
        classes: class names that subfolder names map to (index = label); by default
            the sorted subfolder names. A subfolder not in ``classes`` gets label -1
            and a warning.

    Returns:
        ``(split, classes, skipped)``.
    """
    if not root.is_dir():
        raise GmcliError(f"image folder {root}: not a folder")
    files, owners = list_image_tree(root)
    if not files:
        raise GmcliError(
            f"image folder {root}: no image files; accepted extensions: "
            f"{', '.join(IMAGE_EXTENSIONS)}"
        )

    if classes is None:
        classes = sorted({owner for owner in owners if owner is not None})
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({o for o in owners if o is not None and o not in index})
    if unknown:
        logger.warning("subfolders %s of %s are not classes %s: label -1", unknown, root, classes)

    x, kept, skipped = decode_images(
        files, root=root, channels=channels, size=size, on_error=on_error
    )
    labels = [index.get(owners[i], -1) for i in kept]  # owner None (top level) -> -1
    return Split(x, torch.tensor(labels, dtype=torch.int64)), list(classes), skipped


def load_image_folder(
    root: str | Path,
    *,
    input_shape: tuple[int, int, int] | None = None,
    on_error: str = "skip",
    classes: Sequence[str] | None = None,
) -> tuple[Split, list[str]]:
    """Images of a folder for detection or evaluation, decoded once.

    Args:
        root: a folder of images, optionally one subfolder per class.
        input_shape: (C, H, W) every image is converted to (grey/RGB, bilinear
            resize); by default that of the first readable image.
        on_error: "skip": unreadable files are skipped with a warning naming them;
            "fail": the first one raises GmcliError.
        classes: class names that subfolder names map to; by default the sorted
            subfolder names.

    Returns:
        ``(split, skipped)``: x (N, C, H, W) uint8, y (N,) the subfolder's class index
        or -1 without a subfolder; ``skipped`` the unreadable files relative to root.
    """
    channels, size = None, None
    if input_shape is not None:
        if len(input_shape) != 3 or input_shape[0] not in (1, 3) or min(input_shape) < 1:
            raise GmcliError(
                f"input_shape: expected (C, H, W) with C 1 or 3, got {tuple(input_shape)}"
            )
        channels, size = int(input_shape[0]), (int(input_shape[1]), int(input_shape[2]))
    split, _, skipped = read_image_tree(
        Path(root).expanduser(), channels=channels, size=size, on_error=on_error, classes=classes
    )
    return split, skipped
