"""The adversarial set on disk: writer and reader round trip, partial sets, and
every way a set on disk can be broken."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gmcli.attacks.advset import AdvSetWriter, array_specs, list_advsets, load_advset
from gmcli.errors import GmcliError

SHAPE = (1, 4, 4)
EPS = [0.1, 0.3]


def batch(rng: np.random.Generator, b: int, *, targeted: bool = False) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {
        "clean": rng.random((b, *SHAPE), dtype=np.float32),
        "labels": rng.integers(0, 10, b),
        "clean_pred": rng.integers(0, 10, b),
    }
    if targeted:
        out["targets"] = rng.integers(0, 10, b)
    for i in range(len(EPS)):
        out[f"adv_{i}"] = rng.random((b, *SHAPE), dtype=np.float32)
        out[f"success_{i}"] = rng.random(b) > 0.5
        out[f"pred_{i}"] = rng.integers(0, 10, b)
        out[f"norm_{i}"] = rng.random(b).astype(np.float32)
    return out


def write(folder: Path, sizes: list[int], *, n: int | None = None, finish: bool = True,
          targeted: bool = False) -> tuple[Path, list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(0)
    batches = [batch(rng, b, targeted=targeted) for b in sizes]
    writer = AdvSetWriter(folder, n=n or sum(sizes), input_shape=SHAPE, epsilons=EPS,
                          manifest={"method": "test", "norm": "linf"}, targeted=targeted)
    for b in batches:
        writer.write(b)
    path = writer.finish() if finish else writer.keep_partial()
    return path, batches


def test_round_trip(tmp_path: Path) -> None:
    path, batches = write(tmp_path / "attacks" / "set", [5, 5, 3], targeted=True)
    s = load_advset(path)
    assert s.complete and s.n == 13 and s.epsilons == EPS and s.norm == "linf"
    assert s.manifest["batches_done"] == 3 and s.manifest["method"] == "test"
    for name in array_specs(len(EPS), targeted=True):
        expected = np.concatenate([b[name] for b in batches])
        stored = {"clean": s.clean, "labels": s.labels, "clean_pred": s.clean_pred,
                  "targets": s.targets}.get(name)
        if stored is None:
            kind, i = name.rsplit("_", 1)
            stored = {"adv": s.adv, "success": s.success, "pred": s.pred, "norm": s.norms}[kind](int(i))
        np.testing.assert_array_equal(stored, expected)
    assert s.labels.dtype == np.int64 and s.success(0).dtype == np.bool_
    assert isinstance(s.adv(0), np.memmap)
    assert load_advset(path / "manifest.json").n == 13
    assert list_advsets(tmp_path) == [path]
    assert "complete" in repr(s)


def test_partial_set_is_truncated(tmp_path: Path) -> None:
    path, batches = write(tmp_path / "set", [4, 4], n=20, finish=False)
    s = load_advset(path)
    assert not s.complete and s.n == 8 and s.manifest["n_planned"] == 20
    assert s.adv(1).shape == (8, *SHAPE) and s.labels.shape == (8,)
    np.testing.assert_array_equal(s.clean, np.concatenate([b["clean"] for b in batches]))


def test_nothing_kept_without_a_batch(tmp_path: Path) -> None:
    writer = AdvSetWriter(tmp_path / "attacks" / "set", n=4, input_shape=SHAPE, epsilons=EPS, manifest={})
    assert writer.keep_partial() is None
    assert not (tmp_path / "attacks").exists()


def test_writer_refuses_bad_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    writer = AdvSetWriter(tmp_path / "set", n=4, input_shape=SHAPE, epsilons=EPS, manifest={})
    good = batch(rng, 3)
    with pytest.raises(ValueError, match="missing"):
        writer.write({k: v for k, v in good.items() if k != "pred_1"})
    writer.write(good)
    with pytest.raises(ValueError, match="overflows"):
        writer.write(batch(rng, 2))
    with pytest.raises(RuntimeError, match="3 of 4"):
        writer.finish()
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_folders_are_skipped_and_cleaned(tmp_path: Path) -> None:
    root = tmp_path / "attacks"
    stale = root / ".set.tmp-999999999-abcdef"
    stale.mkdir(parents=True)
    (stale / "manifest.json").write_text("{}")
    assert list_advsets(tmp_path) == []
    write(root / "set", [2])
    assert not stale.exists()
    assert [p.name for p in root.iterdir()] == ["set"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "manifest.json").unlink(), "has no manifest.json"),
        (lambda p: (p / "manifest.json").write_text("{not json"), "manifest.json is corrupt"),
        (lambda p: (p / "manifest.json").write_text('{"format": "other"}'), "not a gmcli-advset manifest"),
        (lambda p: _edit(p, format_version=99), "format version 99"),
        (lambda p: _edit(p, n=100), "n=100 of n_planned=6"),
        (lambda p: _edit(p, epsilons=None), "lacks or garbles the key 'epsilons'"),
        (lambda p: (p / "adv_1.npy").unlink(), "array adv_1.npy is missing"),
        (lambda p: (p / "pred_0.npy").write_bytes(b"garbage"), "array pred_0.npy is unreadable"),
        (lambda p: np.save(p / "labels.npy", np.zeros(6, dtype=np.int32)), "expected (6,) and int64"),
        (lambda p: np.save(p / "clean.npy", np.zeros((6, 1, 5, 5), np.float32)), "expected (6, 1, 4, 4)"),
    ],
)
def test_broken_sets_are_named(tmp_path: Path, damage, message: str) -> None:
    path, _ = write(tmp_path / "set", [6])
    damage(path)
    with pytest.raises(GmcliError, match=__import__("re").escape(message)):
        load_advset(path)


def _edit(folder: Path, **changes) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_eps_index_out_of_range(tmp_path: Path) -> None:
    path, _ = write(tmp_path / "set", [2])
    with pytest.raises(GmcliError, match=r"eps index 2 out of range; accepted: 0..1"):
        load_advset(path).adv(2)
