"""What ``gmcli detect`` judges: input specifications turned into sources.

Accepted forms of ``--input`` (``INPUT_FORMS``):

- ``adv`` (the default): every adversarial set of the run (``<run>/attacks/*``);
- ``adv:<id>`` or ``adv:<folder>``: one adversarial set, by id or path;
- ``split:<train|val|test>``: a split of the run's own data set (in-distribution);
- ``dataset:<name>[:<train|val|test|all>]``: a named data set (default its test
  split), for instance ``dataset:digits``: out-of-distribution unless it is the
  run's own data set;
- ``idx:<folder>``: an IDX images/labels pair (out-of-distribution);
- ``folder:<folder>``: a folder of image files (out-of-distribution);
- a bare path: an adversarial set when it holds ``manifest.json``, an IDX folder
  when it holds ``*-images-idx3-ubyte[.gz]``, else an image folder.

Inputs of another shape are converted to the checkpoint's input shape
(``gmcli.data.convert_to_shape``, which warns).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gmcli.errors import GmcliError

log = logging.getLogger(__name__)

INPUT_FORMS = (
    "adv",
    "adv:<id|folder>",
    "split:<train|val|test>",
    "dataset:<name>[:<train|val|test|all>]",
    "idx:<folder>",
    "folder:<folder>",
    "<path>",
)
KINDS = ("adversarial", "ood", "in-distribution")
RUN_SPLITS = ("train", "val", "test")


@dataclass
class Source:
    """One set of inputs to judge.

    Attributes:
        name: how files and tables name it (``adv:<id>``, ``split:test``, ...).
        kind: ``"adversarial"``, ``"ood"`` (every input abnormal) or
            ``"in-distribution"`` (every input clean).
        split: the split of the run's data the inputs come from, when they do
            (thresholds are never calibrated on it).
        advset: the adversarial set (kind ``"adversarial"``).
        x: the inputs (N, C, H, W), float in [0, 1] or uint8 (other kinds).
        y: their labels (N,), -1 where unknown.
        skipped: unreadable files that were skipped.
    """

    name: str
    kind: str
    split: str | None = None
    advset: Any = None
    x: Tensor | None = None
    y: Tensor | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        if self.advset is not None:
            return int(self.advset.n)
        return 0 if self.x is None else int(self.x.shape[0])


def advset_fingerprint(manifest: dict[str, Any]) -> str | None:
    """The checkpoint fingerprint an adversarial set's manifest records, if any."""
    for key in ("checkpoint_fingerprint", "fingerprint"):
        if isinstance(manifest.get(key), str):
            return manifest[key]
    ckpt = manifest.get("checkpoint")
    if isinstance(ckpt, dict) and isinstance(ckpt.get("fingerprint"), str):
        return ckpt["fingerprint"]
    return None


def open_advset(path: Path, fingerprint: str) -> Source:
    """An adversarial set as a source, refused when made from another checkpoint."""
    from gmcli.attacks.advset import load_advset

    advset = load_advset(path)
    made_from = advset_fingerprint(advset.manifest)
    if made_from is None:
        raise GmcliError(
            f"adversarial set {str(path)!r} records no checkpoint fingerprint; "
            f"cannot tell that it was made from this checkpoint ({fingerprint[:12]})"
        )
    if made_from != fingerprint:
        raise GmcliError(
            f"adversarial set {str(path)!r} was made from checkpoint {made_from}, not from "
            f"this run's checkpoint {fingerprint}; attack this checkpoint again"
        )
    if not advset.complete:
        log.warning("adversarial set %s is partial: %d samples", path.name, advset.n)
    return Source(f"adv:{path.name}", "adversarial", split=advset.manifest.get("split"), advset=advset)


def _is_idx_folder(folder: Path) -> bool:
    return any("idx3" in p.name and "images" in p.name for p in folder.iterdir() if p.is_file())


def _has_images(folder: Path) -> bool:
    from gmcli.data import IMAGE_EXTENSIONS

    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".") for f in files):
            return True
    return False


def _folder(text: str, what: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_dir():
        raise GmcliError(f"--input {what}:{text}: no such folder")
    return path


class InputReader:
    """Turns ``--input`` specifications into sources for one run and checkpoint.

    Args:
        run_dir: the run directory.
        meta: the checkpoint's metadata (fingerprint, input shape, dataset).
        run_data: returns the run's ``DataBundle`` (loaded once, when first needed).
        on_error: unreadable image files: ``"skip"`` or ``"fail"``.
    """

    def __init__(
        self,
        run_dir: Path,
        meta: dict[str, Any],
        run_data: Callable[[], Any],
        *,
        on_error: str = "skip",
    ) -> None:
        self.run_dir = run_dir
        self.fingerprint = str(meta["fingerprint"])
        self.input_shape = tuple(int(v) for v in meta["input_shape"])
        self.dataset_name = meta.get("dataset", {}).get("name")
        self.run_data = run_data
        self.on_error = on_error

    def read(self, specs: list[str]) -> list[Source]:
        """Sources for every spec, in order (``adv`` expands to every set of the run)."""
        sources: list[Source] = []
        for spec in specs or ["adv"]:
            sources.extend(self.read_one(spec))
        names = [s.name for s in sources]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise GmcliError(f"--input: {', '.join(repeated)} given more than once")
        return sources

    def read_one(self, spec: str) -> list[Source]:
        prefix, sep, rest = spec.partition(":")
        if spec in ("adv", "adv:all"):
            return self._all_advsets()
        if sep and prefix == "adv":
            return [open_advset(self._advset_path(rest), self.fingerprint)]
        if sep and prefix == "split":
            return [self._run_split(rest)]
        if sep and prefix == "dataset":
            return [self._dataset(rest)]
        if sep and prefix == "idx":
            return [self._idx(_folder(rest, "idx"))]
        if sep and prefix == "folder":
            return [self._images(_folder(rest, "folder"))]

        path = Path(spec).expanduser()
        if path.is_dir():
            if (path / "manifest.json").is_file():
                return [open_advset(path, self.fingerprint)]
            if _is_idx_folder(path):
                return [self._idx(path)]
            return [self._images(path)]
        raise GmcliError(
            f"--input {spec!r}: not a known form nor an existing folder; accepted: "
            f"{', '.join(INPUT_FORMS)}"
        )

    def _advset_path(self, text: str) -> Path:
        """``<run>/attacks/<text>`` when it exists, else ``text`` as a folder."""
        from gmcli.attacks.advset import list_advsets

        if (self.run_dir / "attacks" / text).is_dir():
            return self.run_dir / "attacks" / text
        if Path(text).expanduser().is_dir():
            return Path(text).expanduser()
        known = ", ".join(p.name for p in list_advsets(self.run_dir)) or "none"
        raise GmcliError(
            f"--input adv:{text}: no adversarial set of that id in {self.run_dir / 'attacks'} "
            f"nor a folder of that name; sets of this run: {known}"
        )

    def _all_advsets(self) -> list[Source]:
        from gmcli.attacks.advset import list_advsets

        paths = list_advsets(self.run_dir)
        if not paths:
            log.warning("run %s has no adversarial sets (run gmcli attack first); nothing to judge",
                        self.run_dir)
        return [open_advset(p, self.fingerprint) for p in paths]

    def _run_split(self, name: str) -> Source:
        if name not in RUN_SPLITS:
            raise GmcliError(f"--input split:{name}: unknown split; accepted: {', '.join(RUN_SPLITS)}")
        split = self.run_data().split(name)
        return Source(f"split:{name}", "in-distribution", split=name, x=split.x, y=split.y)

    def _dataset(self, text: str) -> Source:
        from gmcli.data import DATASETS, convert_to_shape, load_dataset

        name, _, part = text.partition(":")
        part = part or "test"
        if name not in DATASETS:
            raise GmcliError(
                f"--input dataset:{text}: unknown data set {name!r}; accepted: {', '.join(DATASETS)}"
            )
        if part not in (*RUN_SPLITS, "all"):
            raise GmcliError(
                f"--input dataset:{text}: unknown split {part!r}; accepted: train, val, test, all"
            )
        if name == self.dataset_name:
            log.warning("dataset:%s is the run's own data set: judged as in-distribution", name)
            if part == "all":
                raise GmcliError(f"--input dataset:{text}: use split:train|val|test for the run's own data")
            source = self._run_split(part)
            source.name = f"dataset:{name}:{part}"
            return source
        bundle = load_dataset(name)
        if part == "all":
            x = torch.cat([bundle.split(s).float_x() for s in RUN_SPLITS])
            y = torch.cat([bundle.split(s).y for s in RUN_SPLITS])
        else:
            x, y = bundle.split(part).x, bundle.split(part).y
        return Source(f"dataset:{name}:{part}", "ood", x=convert_to_shape(x, self.input_shape), y=y)

    def _idx(self, folder: Path) -> Source:
        from gmcli.data import convert_to_shape, load_idx_folder

        split = load_idx_folder(folder)
        x = convert_to_shape(split.x, self.input_shape)
        return Source(f"idx:{folder}", "ood", x=x, y=split.y)

    def _images(self, folder: Path) -> Source:
        from gmcli.data import convert_to_shape, load_image_folder

        name = f"folder:{folder}"
        if not _has_images(folder):
            log.warning("image folder %s holds no image files: nothing to judge", folder)
            c, h, w = self.input_shape
            return Source(name, "ood", x=torch.zeros(0, c, h, w), y=torch.zeros(0, dtype=torch.int64))
        split, skipped = load_image_folder(folder, on_error=self.on_error)
        x = convert_to_shape(split.x, self.input_shape)
        return Source(name, "ood", x=x, y=split.y, skipped=list(skipped))
