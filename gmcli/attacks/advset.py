"""The adversarial set on disk: written by ``gmcli attack``, read by detect and report.

Layout of ``<run>/attacks/<attack-id>/`` (docs/architecture.md), sizes N
samples, E budgets, (C, H, W) the input shape:

- ``manifest.json``: provenance and progress (see :class:`AdvSetWriter`);
- ``clean.npy`` (N, C, H, W) float32, ``labels.npy`` (N,) int64,
  ``clean_pred.npy`` (N,) int64, and ``targets.npy`` (N,) int64 for a
  targeted attack;
- per budget index i (eps sorted ascending): ``adv_<i>.npy`` (N, C, H, W)
  float32, the adversarial input clipped to the budget and to [0, 1];
  ``success_<i>.npy`` (N,) bool, the model's prediction on ``adv_<i>`` differs
  from the label (targeted: equals the target); ``pred_<i>.npy`` (N,) int64;
  ``norm_<i>.npy`` (N,) float32, ||adv_<i> - clean|| in the attack's norm.

Success is the raw criterion, also true for a sample the model already
misclassified: filter on ``clean_pred == labels`` to count only genuine
adversarial examples (gm-method.md section 4).

Writing and interruption: the arrays are numpy memory maps in a hidden
temporary folder beside the final one, filled batch by batch; after each
batch is stored, the manifest is rewritten atomically with the number of
samples done, so the manifest never claims a half-written batch. A finished set gets ``complete: true`` and is renamed into place,
replacing an earlier set of the same id. On Ctrl-C the finished batches are
kept as a partial set (``complete: false``, arrays read back truncated to
``n``), unless a complete set of the same id exists already, which is then
kept instead. On any other error nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gmcli import __version__
from gmcli.errors import GmcliError

log = logging.getLogger(__name__)

FORMAT = "gmcli-advset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ATTACKS_DIR = "attacks"


def _per_eps_arrays(i: int) -> dict[str, tuple[str, bool]]:
    """name -> (dtype, is an image array) for budget index i."""
    return {
        f"adv_{i}": ("float32", True),
        f"success_{i}": ("bool", False),
        f"pred_{i}": ("int64", False),
        f"norm_{i}": ("float32", False),
    }


def array_specs(num_eps: int, *, targeted: bool) -> dict[str, tuple[str, bool]]:
    """Every array of a set: name -> (dtype, is an image array)."""
    specs = {
        "clean": ("float32", True),
        "labels": ("int64", False),
        "clean_pred": ("int64", False),
    }
    if targeted:
        specs["targets"] = ("int64", False)
    for i in range(num_eps):
        specs.update(_per_eps_arrays(i))
    return specs


def _write_json_atomic(path: Path, obj: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class AdvSetWriter:
    """Streams one adversarial set to disk, batch by batch, through memory maps.

    Args:
        final_dir: ``<run>/attacks/<attack-id>``; written only when finished
            (or kept partial on Ctrl-C).
        n: N, the number of samples planned.
        input_shape: (C, H, W).
        epsilons: the E budgets, ascending.
        manifest: provenance to record (method, norm, params, seed, split,
            limit, checkpoint ...); the writer adds format, progress and dates.
        targeted: also store ``targets.npy``.

    Use :meth:`write` per batch, then :meth:`finish`; :meth:`abort` on failure.
    """

    def __init__(
        self,
        final_dir: str | os.PathLike,
        *,
        n: int,
        input_shape: Sequence[int],
        epsilons: Sequence[float],
        manifest: Mapping[str, Any],
        targeted: bool = False,
    ) -> None:
        self.final_dir = Path(final_dir)
        self.n_total = int(n)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.epsilons = [float(e) for e in epsilons]
        self.targeted = targeted
        self.n_done = 0
        self.batches_done = 0

        parent = self.final_dir.parent
        self._made_parent = not parent.exists()
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.final_dir)
        self.tmp_dir = parent / f".{self.final_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.tmp_dir.mkdir()

        self.manifest: dict[str, Any] = dict(manifest)
        self.manifest.update(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            attack_id=self.final_dir.name,
            epsilons=self.epsilons,
            input_shape=list(self.input_shape),
            targeted=targeted,
            n=0,
            n_planned=self.n_total,
            batches_done=0,
            complete=False,
            gmcli_version=__version__,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        self.arrays: dict[str, np.memmap] = {}
        try:
            for name, (dtype, image) in array_specs(len(self.epsilons), targeted=targeted).items():
                shape = (self.n_total, *self.input_shape) if image else (self.n_total,)
                self.arrays[name] = np.lib.format.open_memmap(
                    self.tmp_dir / f"{name}.npy", mode="w+", dtype=dtype, shape=shape
                )
            self.manifest["arrays"] = sorted(self.arrays)
            _write_json_atomic(self.tmp_dir / MANIFEST, self.manifest)
        except BaseException:
            self.abort()
            raise

    def write(self, batch: Mapping[str, np.ndarray], **fields: Any) -> None:
        """Append one batch: every array name (see :func:`array_specs`) -> (B, ...) values.

        The manifest advances (``n``, ``batches_done`` and any ``fields``, such
        as running results) only after all arrays of the batch are written.
        """
        sizes = {len(v) for v in batch.values()}
        missing = set(self.arrays) - set(batch)
        if len(sizes) != 1 or missing:
            raise ValueError(
                f"batch needs arrays {sorted(self.arrays)} of one length; missing {sorted(missing)}"
            )
        b = sizes.pop()
        start, stop = self.n_done, self.n_done + b
        if stop > self.n_total:
            raise ValueError(f"batch overflows the set: {stop} > {self.n_total} samples planned")

        # Stores into a shared file mapping land in the page cache at once: a
        # killed process loses nothing it wrote, so no msync per batch (it
        # would cost a synchronous disk write each time); close() flushes.
        for name, values in batch.items():
            self.arrays[name][start:stop] = values

        self.n_done = stop
        self.batches_done += 1
        self.manifest.update(fields)
        self.manifest.update(n=self.n_done, batches_done=self.batches_done)
        _write_json_atomic(self.tmp_dir / MANIFEST, self.manifest)

    def update_manifest(self, **fields: Any) -> None:
        """Record more facts; written with the next batch or at the end."""
        self.manifest.update(fields)

    def _close_arrays(self) -> None:
        for arr in self.arrays.values():
            arr.flush()
            mm = getattr(arr, "_mmap", None)
            if mm is not None:
                mm.close()
        self.arrays.clear()

    def _move_into_place(self) -> Path:
        old = None
        if self.final_dir.exists():
            old = self.final_dir.with_name(f".{self.final_dir.name}.old-{uuid.uuid4().hex[:6]}")
            os.replace(self.final_dir, old)
        os.replace(self.tmp_dir, self.final_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final_dir

    def finish(self) -> Path:
        """Mark the set complete and move it into place; returns its folder."""
        if self.n_done != self.n_total:
            raise RuntimeError(f"finish() after {self.n_done} of {self.n_total} samples")
        self._close_arrays()
        self.manifest.update(complete=True, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        _write_json_atomic(self.tmp_dir / MANIFEST, self.manifest)
        return self._move_into_place()

    def keep_partial(self) -> Path | None:
        """After an interruption: keep the finished batches as a partial set.

        Returns the folder, or None when nothing was kept (no batch finished,
        or a complete set of the same id exists and is kept instead).
        """
        self._close_arrays()
        existing = _read_manifest_quietly(self.final_dir)
        if self.n_done == 0 or (existing is not None and existing.get("complete")):
            self.abort()
            return None
        self.manifest.update(complete=False, interrupted=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        _write_json_atomic(self.tmp_dir / MANIFEST, self.manifest)
        return self._move_into_place()

    def abort(self) -> None:
        """Remove the temporary folder: nothing of this set is left behind."""
        self._close_arrays()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        if self._made_parent:
            with contextlib.suppress(OSError):  # not empty: another set landed there
                self.final_dir.parent.rmdir()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: a probe, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(final_dir: Path) -> None:
    """Remove what a killed writer of this id left: its temporary or replaced folders."""
    for path in final_dir.parent.glob(f".{final_dir.name}.*"):
        tag = path.name[len(final_dir.name) + 2 :]
        if tag.startswith("tmp-"):
            pid = tag.split("-")[1]
            if pid.isdigit() and _pid_alive(int(pid)):
                continue  # another writer of the same id is at work
        elif not tag.startswith("old-"):
            continue
        log.info("removing %s, left by an interrupted attack", path)
        shutil.rmtree(path, ignore_errors=True)


def _read_manifest_quietly(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


class AdvSet:
    """An adversarial set read back from disk; arrays are read-only memory maps.

    Arrays of a partial set are truncated to the ``n`` samples finished.

    Attributes:
        path: the set's folder.
        manifest: the provenance dict of ``manifest.json``.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.path = path
        self.manifest = manifest
        self._arrays = arrays

    def __repr__(self) -> str:
        m = self.manifest
        state = "complete" if m.get("complete") else "partial"
        return (
            f"AdvSet({str(self.path)!r}, method={m.get('method')!r}, norm={m.get('norm')!r}, "
            f"epsilons={self.epsilons}, n={self.n}, {state})"
        )

    @property
    def n(self) -> int:
        """Samples stored (all of them for a complete set)."""
        return int(self.manifest["n"])

    @property
    def epsilons(self) -> list[float]:
        """The budgets, ascending; index i belongs to ``adv(i)``."""
        return list(self.manifest["epsilons"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def norm(self) -> str:
        """``"linf"`` or ``"l2"``."""
        return str(self.manifest["norm"])

    @property
    def clean(self) -> np.ndarray:
        """Clean inputs (n, C, H, W) float32 in [0, 1]."""
        return self._arrays["clean"]

    @property
    def labels(self) -> np.ndarray:
        """Labels (n,) int64."""
        return self._arrays["labels"]

    @property
    def clean_pred(self) -> np.ndarray:
        """Predictions on the clean inputs (n,) int64."""
        return self._arrays["clean_pred"]

    @property
    def targets(self) -> np.ndarray | None:
        """Target classes (n,) int64 of a targeted attack, else None."""
        return self._arrays.get("targets")

    def _index(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < len(self.epsilons):
            raise GmcliError(
                f"adversarial set {str(self.path)!r}: eps index {i!r} out of range; "
                f"accepted: 0..{len(self.epsilons) - 1} for eps {self.epsilons}"
            )
        return int(i)

    def adv(self, i: int) -> np.ndarray:
        """Adversarial inputs for budget i, (n, C, H, W) float32."""
        return self._arrays[f"adv_{self._index(i)}"]

    def success(self, i: int) -> np.ndarray:
        """Success flags for budget i, (n,) bool (raw criterion, see the module doc)."""
        return self._arrays[f"success_{self._index(i)}"]

    def pred(self, i: int) -> np.ndarray:
        """Predictions on ``adv(i)``, (n,) int64."""
        return self._arrays[f"pred_{self._index(i)}"]

    def norms(self, i: int) -> np.ndarray:
        """||adv(i) - clean|| per sample in the attack's norm, (n,) float32."""
        return self._arrays[f"norm_{self._index(i)}"]


def load_advset(path: str | os.PathLike) -> AdvSet:
    """Open the adversarial set in ``path`` (its folder, or its manifest.json).

    Raises:
        GmcliError: the manifest or an array is missing, unreadable or
            inconsistent with the manifest.
    """
    folder = Path(path)
    if folder.name == MANIFEST:
        folder = folder.parent
    where = f"adversarial set {str(folder)!r}"
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise GmcliError(f"{where} has no {MANIFEST}: not a set written by gmcli attack (or not finished)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise GmcliError(f"{where}: {MANIFEST} is corrupt ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise GmcliError(f"{where}: {MANIFEST} is not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise GmcliError(f"{where}: format version {version!r}; this gmcli reads up to {FORMAT_VERSION}")
    key = ""
    try:
        key = "n"
        n = int(manifest[key])
        key = "n_planned"
        n_planned = int(manifest[key])
        key = "epsilons"
        epsilons = [float(e) for e in manifest[key]]
        key = "input_shape"
        shape = tuple(int(v) for v in manifest[key])
        targeted = bool(manifest.get("targeted", False))
    except (KeyError, TypeError, ValueError):
        raise GmcliError(f"{where}: {MANIFEST} lacks or garbles the key {key!r}") from None
    if not 0 <= n <= n_planned:
        raise GmcliError(f"{where}: {MANIFEST} says n={n} of n_planned={n_planned}")

    arrays: dict[str, np.ndarray] = {}
    for name, (dtype, image) in array_specs(len(epsilons), targeted=targeted).items():
        file = folder / f"{name}.npy"
        expected = (n_planned, *shape) if image else (n_planned,)
        try:
            arr = np.load(file, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise GmcliError(f"{where}: array {file.name} is missing") from None
        except (OSError, ValueError) as exc:
            raise GmcliError(f"{where}: array {file.name} is unreadable ({exc})") from None
        if arr.shape != expected or arr.dtype != np.dtype(dtype):
            raise GmcliError(
                f"{where}: array {file.name} has shape {arr.shape} and dtype {arr.dtype}, "
                f"expected {expected} and {dtype}"
            )
        arrays[name] = arr[:n]
    return AdvSet(folder, manifest, arrays)


def list_advsets(run_dir: str | os.PathLike) -> list[Path]:
    """The adversarial set folders of a run (those with a manifest), sorted by name.

    Temporary folders of attacks in progress (hidden, dot-prefixed) are skipped.
    """
    root = Path(run_dir) / ATTACKS_DIR
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
    )
