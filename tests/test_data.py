"""Tests of gmcli.data: IDX files, the digits split, batches, conversion, image folders."""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gmcli.data import (
    DATASETS,
    DataBundle,
    Split,
    convert_to_shape,
    load_dataset,
    load_idx_folder,
    load_image_folder,
    read_idx,
)
from gmcli.data.augment import random_crop
from gmcli.errors import GmcliError

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    """The IDX encoding of ``array``, written out with struct (the oracle)."""
    big_endian = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(big_endian[code]).tobytes()


def write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> Path:
    data = idx_bytes(array, code)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def write_mnist_folder(folder: Path, *, n_train: int, n_test: int, gz: bool, seed: int = 0):
    """A small MNIST-style folder; returns the arrays written per split."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        suffix = ".gz" if gz else ""
        write_idx(folder / (IDX_NAMES[split][0] + suffix), images)
        write_idx(folder / (IDX_NAMES[split][1] + suffix), labels)
        written[split] = (images, labels)
    return written


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "code, dtype",
    [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32),
     (0x0D, np.float32), (0x0E, np.float64)],
)
def test_read_idx_roundtrip(tmp_path, gz, code, dtype):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal((5, 3, 4)) * 50).astype(dtype)
    path = write_idx(tmp_path / ("a.idx.gz" if gz else "a.idx"), array, code)

    back = read_idx(path)

    assert back.dtype == np.dtype(dtype)
    assert back.shape == (5, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_read_idx_truncated_names_file(tmp_path):
    data = idx_bytes(np.zeros((4, 28, 28), dtype=np.uint8), 0x08)
    path = tmp_path / "short-images-idx3-ubyte"
    path.write_bytes(data[:-10])

    with pytest.raises(GmcliError, match="short-images-idx3-ubyte"):
        read_idx(path)


def test_read_idx_truncated_gzip_names_file(tmp_path):
    path = write_idx(tmp_path / "x.gz", np.zeros((50, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:40])

    with pytest.raises(GmcliError, match="x.gz"):
        read_idx(path)


def test_read_idx_wrong_magic_names_file(tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))

    with pytest.raises(GmcliError, match=r"picture\.png.*not an IDX file"):
        read_idx(path)


def test_read_idx_unknown_dtype_code(tmp_path):
    path = tmp_path / "odd"
    path.write_bytes(struct.pack(">BBBBI", 0, 0, 0x07, 1, 2) + b"\x00\x00")

    with pytest.raises(GmcliError, match=r"odd.*0x07"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_folder_loads_official_splits(tmp_path, gz):
    written = write_mnist_folder(tmp_path, n_train=100, n_test=30, gz=gz)

    bundle = load_dataset("mnist", root=str(tmp_path), val_fraction=0.2, seed=3)

    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (80, 20, 30)
    assert bundle.train.x.dtype == torch.uint8
    assert bundle.input_shape == (1, 28, 28)
    assert bundle.classes == [str(k) for k in range(10)]
    np.testing.assert_array_equal(bundle.test.x[:, 0].numpy(), written["test"][0])
    np.testing.assert_array_equal(bundle.test.y.numpy(), written["test"][1])

    # train + val are a partition of the train file: compare sorted rows.
    images, labels = written["train"]
    seen = torch.cat([bundle.train.x, bundle.val.x])[:, 0].reshape(100, -1).numpy()
    order = np.lexsort(seen.T[::-1])
    expected = images.reshape(100, -1)
    np.testing.assert_array_equal(seen[order], expected[np.lexsort(expected.T[::-1])])
    assert sorted(torch.cat([bundle.train.y, bundle.val.y]).tolist()) == sorted(labels.tolist())


def test_mnist_folder_missing_file_names_expected_files(tmp_path):
    write_mnist_folder(tmp_path, n_train=20, n_test=10, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()

    with pytest.raises(GmcliError) as info:
        load_dataset("mnist", root=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in message


def test_mnist_without_root_asks_for_data_root():
    with pytest.raises(GmcliError, match="data.root"):
        load_dataset("mnist")


def test_load_idx_folder_prefers_test_pair(tmp_path):
    written = write_mnist_folder(tmp_path, n_train=12, n_test=7, gz=False)

    split = load_idx_folder(tmp_path)

    assert split.x.shape == (7, 1, 28, 28)
    np.testing.assert_array_equal(split.x[:, 0].numpy(), written["test"][0])
    np.testing.assert_array_equal(split.y.numpy(), written["test"][1])


def test_load_idx_folder_any_pair_and_mismatch(tmp_path):
    write_idx(tmp_path / "mine-images-idx3-ubyte", np.ones((3, 5, 6), dtype=np.uint8))
    write_idx(tmp_path / "mine-labels-idx1-ubyte", np.array([1, 2, 3], dtype=np.uint8))
    assert load_idx_folder(tmp_path).x.shape == (3, 1, 5, 6)

    write_idx(tmp_path / "mine-labels-idx1-ubyte", np.array([1, 2], dtype=np.uint8))
    with pytest.raises(GmcliError, match="3 images but 2 labels"):
        load_idx_folder(tmp_path)


def test_load_idx_folder_without_pair(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing")
    with pytest.raises(GmcliError, match=str(tmp_path)):
        load_idx_folder(tmp_path)


# ---------------------------------------------------------------- digits


def test_digits_split_partition_and_stratification():
    bundle = load_dataset("digits", seed=0)
    parts = [bundle.train, bundle.val, bundle.test]

    assert sum(len(p) for p in parts) == 1797
    assert len(bundle.test) == 360  # 20 % of 1797, rounded up by scikit-learn
    assert len(bundle.val) == 144  # 10 % of the remaining 1437
    assert bundle.input_shape == (1, 8, 8)
    assert bundle.classes == [str(k) for k in range(10)]
    assert bundle.train.x.dtype == torch.float32
    assert 0.0 <= float(bundle.train.x.min()) and float(bundle.train.x.max()) <= 1.0

    # The three parts are disjoint and together hold every digit once: the same
    # multiset of (image, label) as scikit-learn's arrays, the oracle.
    from collections import Counter

    from sklearn.datasets import load_digits

    digits = load_digits()
    oracle = Counter((digits.images[i].astype(np.uint8).tobytes(), int(digits.target[i]))
                     for i in range(1797))
    ours = Counter(((p.x[i, 0].numpy() * 16).round().astype(np.uint8).tobytes(), int(p.y[i]))
                   for p in parts for i in range(len(p)))
    assert ours == oracle

    # Stratified: each class share in the test split is within one sample of overall.
    overall = np.bincount(digits.target, minlength=10) / 1797
    test_counts = np.bincount(bundle.test.y.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - overall * len(bundle.test)) <= 1.0)
    val_counts = np.bincount(bundle.val.y.numpy(), minlength=10)
    assert np.all(np.abs(val_counts - overall * len(bundle.val)) <= 1.5)


def test_digits_split_depends_on_seed_only():
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=0)
    c = load_dataset("digits", seed=1)

    for name in ("train", "val", "test"):
        assert torch.equal(a.split(name).x, b.split(name).x)
        assert torch.equal(a.split(name).y, b.split(name).y)
    assert not torch.equal(a.test.x, c.test.x)


def test_digits_mean_std_match_numpy_over_train():
    bundle = load_dataset("digits", seed=2)
    x = bundle.train.x.numpy().astype(np.float64)

    np.testing.assert_allclose(bundle.mean, [x.mean()], rtol=1e-10)
    np.testing.assert_allclose(bundle.std, [x.std()], rtol=1e-10)


def test_limit_train_and_val_fraction_zero():
    bundle = load_dataset("digits", val_fraction=0.0, limit_train=100)

    assert len(bundle.train) == 100
    assert len(bundle.val) == 0
    x = bundle.train.x.numpy().astype(np.float64)
    np.testing.assert_allclose(bundle.std, [x.std()], rtol=1e-10)


def test_split_by_name_and_errors():
    bundle = load_dataset("digits")
    assert isinstance(bundle, DataBundle)
    assert bundle.split("val") is bundle.val

    with pytest.raises(GmcliError, match=r"'valid'.*train, val, test"):
        bundle.split("valid")
    with pytest.raises(GmcliError, match="cifar10"):
        load_dataset("imagenet")
    with pytest.raises(GmcliError, match="val_fraction.*1.5"):
        load_dataset("digits", val_fraction=1.5)
    with pytest.raises(GmcliError, match="limit_train"):
        load_dataset("digits", limit_train=0)


def test_image_size_resizes_at_load_time():
    bundle = load_dataset("digits", image_size=16)
    assert bundle.input_shape == (1, 16, 16)
    assert bundle.test.x.shape[1:] == (1, 16, 16)


@pytest.mark.parametrize("name", ["cifar10", "svhn", "tv-mnist"])
def test_torchvision_sets_never_download_by_default(tmp_path, name):
    with pytest.raises(GmcliError, match="data.root"):
        load_dataset(name)
    with pytest.raises(GmcliError, match="data.download: true"):
        load_dataset(name, root=str(tmp_path))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_tv_mnist_reads_local_files_like_mnist(tmp_path):
    # torchvision's own IDX reader is the oracle for ours (and for the test writer).
    written = write_mnist_folder(tmp_path / "MNIST" / "raw", n_train=40, n_test=20, gz=False)

    tv = load_dataset("tv-mnist", root=str(tmp_path), val_fraction=0.25, seed=4)
    ours = load_dataset("mnist", root=str(tmp_path / "MNIST" / "raw"), val_fraction=0.25, seed=4)

    assert tv.test.x.dtype == torch.uint8 and tv.input_shape == (1, 28, 28)
    np.testing.assert_array_equal(tv.test.x[:, 0].numpy(), written["test"][0])
    for name in ("train", "val", "test"):
        assert torch.equal(tv.split(name).x, ours.split(name).x)
        assert torch.equal(tv.split(name).y, ours.split(name).y)


def test_datasets_lists_every_source():
    assert set(DATASETS) == {"digits", "fashion-mnist", "mnist", "cifar10", "cifar100",
                             "svhn", "tv-mnist", "imagefolder"}


# ---------------------------------------------------------------- batches


def make_split(n: int = 23, c: int = 1, h: int = 6, w: int = 7) -> Split:
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=generator)
    return Split(x, torch.arange(n))


def test_batches_cover_each_sample_once_per_epoch():
    split = make_split()
    generator = torch.Generator().manual_seed(5)

    for shuffle in (False, True):
        seen_y, seen_x = [], []
        for xb, yb in split.batches(5, shuffle=shuffle, generator=generator):
            assert xb.dtype == torch.float32 and yb.dtype == torch.int64
            assert xb.shape[1:] == (1, 6, 7) and xb.shape[0] == yb.shape[0] <= 5
            seen_y.append(yb)
            seen_x.append(xb)
        y = torch.cat(seen_y)
        assert sorted(y.tolist()) == list(range(23))
        # Each image arrives with its own label, scaled by 1/255.
        assert torch.equal(torch.cat(seen_x), split.x[y].float() / 255)
        if not shuffle:
            assert y.tolist() == list(range(23))
    assert y.tolist() != list(range(23))  # shuffled order differs (probability 1 - 1/23!)


def test_batches_repeatable_with_seeded_generator():
    split = make_split()

    def epoch(seed: int):
        g = torch.Generator().manual_seed(seed)
        return [(xb, yb) for xb, yb in split.batches(4, shuffle=True, generator=g,
                                                     augment=("hflip", "crop"))]

    a, b, c = epoch(7), epoch(7), epoch(8)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(torch.equal(ya, yc) for (_, ya), (_, yc) in zip(a, c))


def test_augment_keeps_shape_and_range():
    split = Split(torch.rand(40, 3, 32, 32), torch.zeros(40, dtype=torch.int64))
    g = torch.Generator().manual_seed(0)
    for xb, _ in split.batches(16, generator=g, augment=("crop", "hflip")):
        assert xb.shape[1:] == (3, 32, 32)
        assert float(xb.min()) >= 0.0 and float(xb.max()) <= 1.0


def test_hflip_matches_torch_flip_on_flipped_items():
    # Asymmetric images: every item is distinguishable from its mirror image.
    x = torch.rand(64, 2, 5, 6)
    split = Split(x, torch.arange(64))
    g = torch.Generator().manual_seed(3)

    (xb, yb), = split.batches(64, generator=g, augment=("hflip",))

    flipped = torch.tensor([torch.equal(xb[i], torch.flip(x[i], dims=[-1])) for i in range(64)])
    same = torch.tensor([torch.equal(xb[i], x[i]) for i in range(64)])
    assert torch.all(flipped ^ same)
    assert 10 < int(flipped.sum()) < 54  # about half, by a binomial(64, 1/2) margin


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.rand(20, 1, 8, 8)
    g = torch.Generator().manual_seed(0)

    out = random_crop(x, g, pad=1)

    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(20):
        windows = [padded[i, :, r : r + 8, c : c + 8] for r in range(3) for c in range(3)]
        assert any(torch.equal(out[i], win) for win in windows)
    assert not torch.equal(out, x)


def test_unknown_augment_and_bad_batch_size():
    split = make_split()
    with pytest.raises(GmcliError, match=r"'vflip'.*hflip, crop"):
        next(split.batches(4, augment=("vflip",)))
    with pytest.raises(GmcliError, match="batch_size.*0"):
        next(split.batches(0))


def test_batches_do_not_alias_the_stored_images():
    split = Split(torch.rand(8, 1, 3, 3), torch.zeros(8, dtype=torch.int64))
    before = split.x.clone()

    for xb, _ in split.batches(4):
        xb.zero_()
    split.float_x().zero_()

    assert torch.equal(split.x, before)


def test_subset_and_float_x():
    split = make_split()
    sub = split.subset(5)
    assert len(sub) == 5 and torch.equal(sub.y, torch.arange(5))
    assert len(split.subset(100)) == 23
    assert torch.equal(split.float_x(), split.x.float() / 255)


# ---------------------------------------------------------------- convert_to_shape


@pytest.mark.parametrize(
    "source, target",
    [((3, 32, 32), (1, 28, 28)), ((1, 28, 28), (3, 32, 32)), ((1, 8, 8), (1, 28, 28)),
     ((3, 64, 48), (3, 32, 32))],
)
def test_convert_to_shape_shapes_and_constant(source, target, caplog):
    x = torch.full((2, *source), 0.3)

    with caplog.at_level(logging.WARNING, logger="gmcli.data.convert"):
        out = convert_to_shape(x, target)

    assert out.shape == (2, *target)
    torch.testing.assert_close(out, torch.full_like(out, 0.3))
    assert str(source) in caplog.text and str(target) in caplog.text


def test_convert_to_shape_channel_mean_and_identity(caplog):
    x = torch.rand(3, 3, 4, 4)
    torch.testing.assert_close(convert_to_shape(x, (1, 4, 4)), x.mean(dim=1, keepdim=True))

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gmcli.data.convert"):
        assert convert_to_shape(x, (3, 4, 4)) is x
    assert caplog.text == ""
    with pytest.raises(GmcliError, match="4 channels to 3"):
        convert_to_shape(torch.rand(1, 4, 4, 4), (3, 4, 4))


# ---------------------------------------------------------------- image folders


def write_png_tree(root: Path, *, corrupt: bool = True) -> dict[str, np.ndarray]:
    """Two classes of 6x5 RGB PNGs (pixels from the file name), one corrupt file."""
    written = {}
    for label, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for k in range(3):
            array = np.full((6, 5, 3), 40 * k + 100 * label, dtype=np.uint8)
            array[0, 0] = (k, label, 7)
            Image.fromarray(array).save(root / cls / f"img{k}.png")
            written[f"{cls}/img{k}.png"] = array
    if corrupt:
        (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (root / "dog" / "readme.txt").write_text("not an image, ignored")
    return written


def test_image_folder_skips_and_names_corrupt_file(tmp_path, caplog):
    written = write_png_tree(tmp_path)

    with caplog.at_level(logging.WARNING):
        split, skipped = load_image_folder(tmp_path)

    assert skipped == ["dog/broken.png"]
    assert "dog/broken.png" in caplog.text
    assert split.x.shape == (6, 3, 6, 5) and split.x.dtype == torch.uint8
    assert split.y.tolist() == [0, 0, 0, 1, 1, 1]
    expected = np.stack([written[f"{c}/img{k}.png"] for c in ("cat", "dog") for k in range(3)])
    np.testing.assert_array_equal(split.x.permute(0, 2, 3, 1).numpy(), expected)


def test_image_folder_on_error_fail_names_file(tmp_path):
    write_png_tree(tmp_path)
    with pytest.raises(GmcliError, match="broken.png"):
        load_image_folder(tmp_path, on_error="fail")
    with pytest.raises(GmcliError, match="on_error.*'ignore'"):
        load_image_folder(tmp_path, on_error="ignore")


def test_image_folder_input_shape_and_unlabelled(tmp_path):
    for k in range(2):
        Image.fromarray(np.full((10, 12), 50 * k, dtype=np.uint8)).save(tmp_path / f"g{k}.png")

    split, skipped = load_image_folder(tmp_path, input_shape=(3, 4, 4))

    assert skipped == []
    assert split.x.shape == (2, 3, 4, 4)
    assert split.y.tolist() == [-1, -1]
    assert torch.all(split.x[1] == 50)  # a constant grey image stays constant


def test_imagefolder_dataset_from_tree(tmp_path):
    for label, cls in enumerate(("a", "b")):
        (tmp_path / cls).mkdir()
        for k in range(10):
            Image.fromarray(np.full((9, 9), 10 * k + label, dtype=np.uint8)).save(
                tmp_path / cls / f"{k}.png"
            )

    bundle = load_dataset("imagefolder", root=str(tmp_path), image_size=4, val_fraction=0.25)

    assert bundle.classes == ["a", "b"]
    assert bundle.input_shape == (1, 4, 4)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (12, 4, 4)
    assert np.bincount(bundle.test.y.numpy()).tolist() == [2, 2]


def test_imagefolder_dataset_with_split_subfolders(tmp_path):
    for part, n in (("train", 6), ("test", 2)):
        for cls in ("x", "y"):
            (tmp_path / part / cls).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(np.zeros((5, 5, 3), dtype=np.uint8)).save(
                    tmp_path / part / cls / f"{k}.png"
                )

    bundle = load_dataset("imagefolder", root=str(tmp_path), val_fraction=0.5)

    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (6, 6, 4)
    assert bundle.input_shape == (3, 5, 5)


# ---------------------------------------------------------------- Fashion-MNIST


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_ROOT.is_dir(), reason="Debian's dataset-fashion-mnist absent")
def test_fashion_mnist_from_debian_package():
    bundle = load_dataset("fashion-mnist", val_fraction=0.1, seed=0)

    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (54000, 6000, 10000)
    assert bundle.train.x.dtype == torch.uint8
    assert bundle.input_shape == (1, 28, 28)
    assert len(bundle.classes) == 10 and bundle.classes[9] == "Ankle boot"
    assert np.bincount(bundle.test.y.numpy()).tolist() == [1000] * 10
    assert np.bincount(bundle.val.y.numpy()).tolist() == [600] * 10
