"""The named data sets and ``load_dataset``, which turns one into a ``DataBundle``.

Nothing here downloads unless asked: only the torchvision sets do, and only with
``download=True``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gmcli.data.base import DataBundle, Split, channel_stats
from gmcli.data.idx import load_idx_split
from gmcli.data.images import read_image_tree
from gmcli.data.splits import holdout
from gmcli.errors import GmcliError

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = (
    "digits",
    "fashion-mnist",
    "mnist",
    "cifar10",
    "cifar100",
    "svhn",
    "tv-mnist",
    "imagefolder",
)

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
DIGIT_CLASSES = [str(k) for k in range(10)]

# Share of a set without an official test split that is held out for testing.
TEST_FRACTION = 0.2


@dataclass
class _Loaded:
    """What a source yields before the common steps: train (val not yet taken), test."""

    train: Split
    test: Split
    classes: list[str]
    val: Split | None = None


def _take(split: Split, index: np.ndarray) -> Split:
    """The samples of ``split`` at ``index`` (N',), copied."""
    index_t = torch.from_numpy(np.asarray(index, dtype=np.int64))
    return Split(split.x[index_t], split.y[index_t])


def _hold_out_test(full: Split, seed: int) -> tuple[Split, Split]:
    """(rest, test): a stratified TEST_FRACTION of ``full`` held out as test."""
    kept, held = holdout(full.y.numpy(), TEST_FRACTION, seed=seed, what="test")
    return _take(full, kept), _take(full, held)


def _require_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise GmcliError(
            f"data.root: dataset {name!r} needs a folder, got none; set data.root"
        )
    return Path(root).expanduser()


def _load_digits(seed: int) -> _Loaded:
    """scikit-learn's bundled 8x8 digits (values 0..16 scaled to [0, 1])."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(digits.target.astype(np.int64))
    rest, test = _hold_out_test(Split(x, y), seed)
    return _Loaded(rest, test, list(DIGIT_CLASSES))


def _load_idx_set(name: str, root: str | Path | None) -> _Loaded:
    """MNIST-style IDX files: the official train and test splits."""
    if root is None and name == "fashion-mnist":
        root = FASHION_MNIST_ROOT
    folder = _require_root(name, root)
    if not folder.is_dir():
        hint = " (install Debian's dataset-fashion-mnist)" if name == "fashion-mnist" else ""
        raise GmcliError(f"data.root: folder {folder} for {name!r} does not exist{hint}")
    classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else DIGIT_CLASSES
    return _Loaded(load_idx_split(folder, "train"), load_idx_split(folder, "test"), list(classes))


def _load_torchvision(name: str, root: str | Path | None, download: bool) -> _Loaded:
    """A torchvision data set, converted once to uint8 tensors (N, C, H, W)."""
    folder = _require_root(name, root)
    from torchvision import datasets

    def get(train: bool) -> datasets.VisionDataset:
        if name == "svhn":
            split = "train" if train else "test"
            return datasets.SVHN(str(folder), split=split, download=download)
        kinds = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100,
                 "tv-mnist": datasets.MNIST}
        return kinds[name](str(folder), train=train, download=download)

    try:
        raw = [get(True), get(False)]
    except RuntimeError as exc:
        raise GmcliError(
            f"data.root: dataset {name!r} not found in {folder} ({exc}); set "
            "data.download: true to fetch it there once, or point data.root at its files"
        ) from exc
    except OSError as exc:
        raise GmcliError(f"data.download: fetching {name!r} into {folder} failed ({exc})") from exc

    def to_split(ds: datasets.VisionDataset) -> Split:
        if name == "svhn":
            return Split(torch.from_numpy(ds.data), torch.from_numpy(ds.labels.astype(np.int64)))
        if name == "tv-mnist":
            return Split(ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64))
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # CIFAR: (N, H, W, C)
        return Split(x, torch.tensor(ds.targets, dtype=torch.int64))

    classes = DIGIT_CLASSES if name in ("svhn", "tv-mnist") else list(raw[0].classes)
    return _Loaded(to_split(raw[0]), to_split(raw[1]), list(classes))


def _load_imagefolder(
    root: str | Path | None, image_size: int | None, seed: int
) -> _Loaded:
    """A class-per-subfolder tree; ``root/train|val|test`` subfolders when present."""
    folder = _require_root("imagefolder", root)
    if not folder.is_dir():
        raise GmcliError(f"data.root: folder {folder} for 'imagefolder' does not exist")
    size = None if image_size is None else (image_size, image_size)

    if not (folder / "train").is_dir():
        full, classes, _ = read_image_tree(folder, size=size)
        _check_labelled(full, folder, classes)
        rest, test = _hold_out_test(full, seed)
        return _Loaded(rest, test, classes)

    # Split layout: the train tree fixes classes, channels and size for the others.
    train, classes, _ = read_image_tree(folder / "train", size=size)
    _check_labelled(train, folder / "train", classes)
    channels, size = train.x.shape[1], tuple(train.x.shape[2:])
    parts: dict[str, Split] = {}
    for part in ("val", "test"):
        if (folder / part).is_dir():
            parts[part], _, _ = read_image_tree(
                folder / part, channels=channels, size=size, classes=classes
            )
            _check_labelled(parts[part], folder / part, classes)
    if "test" not in parts:
        train, parts["test"] = _hold_out_test(train, seed)
    return _Loaded(train, parts["test"], classes, parts.get("val"))


def _check_labelled(split: Split, folder: Path, classes: list[str]) -> None:
    """Every image of a training tree must sit in a class subfolder."""
    if len(classes) < 2:
        raise GmcliError(
            f"data.root: image folder {folder} has {len(classes)} class subfolder(s) "
            f"{classes}; expected one subfolder per class, at least 2"
        )
    unlabelled = int((split.y < 0).sum())
    if unlabelled:
        raise GmcliError(
            f"data.root: {unlabelled} images in {folder} are not in a class subfolder "
            f"(classes: {', '.join(classes)})"
        )


def _resize(split: Split, size: int, *, chunk: int = 4096) -> Split:
    """Resize every image to (size, size), bilinear with antialiasing; keeps the dtype."""
    parts = []
    for start in range(0, len(split), chunk):
        x = split.x[start : start + chunk]
        out = F.interpolate(
            x.to(torch.float32), size=(size, size), mode="bilinear", antialias=True
        )
        if x.dtype == torch.uint8:
            out = out.round_().clamp_(0, 255).to(torch.uint8)
        else:
            out = out.clamp_(0.0, 1.0)
        parts.append(out)
    x = torch.cat(parts) if parts else split.x.new_zeros((0, split.x.shape[1], size, size))
    return Split(x, split.y)


def _check_positive(key: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise GmcliError(f"{key}: expected a positive integer or none, got {value!r}")


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = False,
    image_size: int | None = None,
    limit_train: int | None = None,
) -> DataBundle:
    """Load a named data set into memory, with train, validation and test splits.

    Args:
        name: one of ``DATASETS``.
        root: the folder of the files; fashion-mnist defaults to the Debian package's
            ``/usr/share/datasets/fashion-mnist``, digits needs none.
        val_fraction: share of the training split held out (stratified) for
            validation, in [0, 1); unused when an image folder has ``root/val``.
        seed: fixes the validation split, and the test split of sets without one
            (digits, image folders without ``root/test``: a stratified 20 %).
        download: let a torchvision set (cifar10, cifar100, svhn, tv-mnist) fetch
            its files into ``root``; never used otherwise.
        image_size: resize images to (image_size, image_size) once, at load time;
            by default image folders take the first image's size, the others keep
            their own.
        limit_train: keep only the first ``limit_train`` training samples (smoke runs).

    Returns:
        a DataBundle whose mean and std are computed on the (limited) train split.
    """
    if name not in DATASETS:
        raise GmcliError(f"data.name: unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not (
        0.0 <= val_fraction < 1.0
    ):
        raise GmcliError(f"data.val_fraction: expected a value in [0, 1), got {val_fraction!r}")
    _check_positive("data.image_size", image_size)
    _check_positive("data.limit_train", limit_train)

    if name == "digits":
        loaded = _load_digits(seed)
    elif name in ("fashion-mnist", "mnist"):
        if download:
            logger.warning("data.download ignored for %r: its IDX files are read from a folder",
                           name)
        loaded = _load_idx_set(name, root)
    elif name == "imagefolder":
        loaded = _load_imagefolder(root, image_size, seed)
    else:
        loaded = _load_torchvision(name, root, download)

    for part in (loaded.train, loaded.test):
        bad = (part.y < 0) | (part.y >= len(loaded.classes))
        if bool(bad.any()):
            raise GmcliError(
                f"data: dataset {name!r} has label {int(part.y[bad][0])} outside "
                f"0..{len(loaded.classes) - 1}"
            )

    train, val = loaded.train, loaded.val
    if val is None:
        kept, held = holdout(train.y.numpy(), float(val_fraction), seed=seed)
        train, val = _take(train, kept), _take(train, held)
    test = loaded.test

    if image_size is not None and name != "imagefolder" and train.x.shape[2:] != (
        image_size, image_size
    ):
        logger.info("resizing %s from %s to %d px", name, tuple(train.x.shape[2:]), image_size)
        train, val, test = (_resize(s, image_size) for s in (train, val, test))
    if limit_train is not None:
        train = train.subset(limit_train)

    mean, std = channel_stats(train.x)
    bundle = DataBundle(
        name=name,
        train=train,
        val=val,
        test=test,
        classes=list(loaded.classes),
        input_shape=tuple(int(v) for v in train.x.shape[1:]),
        mean=mean,
        std=std,
    )
    logger.info("loaded %r", bundle)
    return bundle
