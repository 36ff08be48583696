"""Area 3: loading Fashion-MNIST with gmcli against reading its IDX files with numpy.

``load_dataset("fashion-mnist")`` reads the four gzipped IDX files, holds out a
stratified validation split and computes the normalisation; the baseline only
decompresses the files and views them with ``np.frombuffer``. ``read_idx`` on the
four files isolates gmcli's IDX parser. Memory: each load in its own forked
child (see :mod:`bench.common`).
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import Context, Row, Section, Stat, fmt_mb, fmt_stat, interleave

KEY = "data"
TITLE = "3. Data: loading Fashion-MNIST"
ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def numpy_read(root: str) -> list[np.ndarray]:
    """The four arrays, by hand: gunzip, skip the header, view the bytes."""
    arrays = []
    for name in FILES:
        with gzip.open(Path(root) / f"{name}.gz", "rb") as f:
            raw = f.read()
        if name.endswith("idx3-ubyte"):
            n, h, w = np.frombuffer(raw, dtype=">u4", count=3, offset=4)
            arrays.append(np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, h, w))
        else:
            arrays.append(np.frombuffer(raw, dtype=np.uint8, offset=8))
    return arrays


def gmcli_read_idx(root: str) -> list[np.ndarray]:
    from gmcli.data import read_idx

    return [read_idx(Path(root) / f"{name}.gz") for name in FILES]


def gmcli_load(root: str) -> object:
    from gmcli.data import load_dataset

    return load_dataset("fashion-mnist", root=root)


# Memory tasks for the zygote: set-up here, the returned callable is measured.
def mem_numpy(root: str) -> Callable[[], object]:
    return lambda: numpy_read(root)


def mem_read_idx(root: str) -> Callable[[], object]:
    import gmcli.data  # noqa: F401 - imported before the measurement starts

    return lambda: gmcli_read_idx(root)


def mem_load_dataset(root: str) -> Callable[[], object]:
    import gmcli.data  # noqa: F401

    return lambda: gmcli_load(root)


def run(ctx: Context) -> Section:
    section = Section(
        key=KEY, title=TITLE,
        method=[
            f"Debian's gzipped IDX files in {ROOT} (60,000 + 10,000 images of 28x28).",
            "Time: in this process, files in the page cache after the warm-up.",
            "Memory: the peak resident size a fresh child adds while loading (its",
            "`ru_maxrss` minus its size when the load starts), anonymous memory in brackets.",
        ],
        columns=["comparison", "gmcli", "numpy"],
    )
    tic = time.perf_counter()
    if not (ROOT / f"{FILES[0]}.gz").is_file():
        section.notes.append(f"Skipped: {ROOT} is not installed (Debian's dataset-fashion-mnist).")
        return section
    root = str(ROOT)

    # One pair at a time: a neighbour that frees a whole data set would bias the next.
    gmcli = {"load_dataset": lambda: gmcli_load(root), "read_idx": lambda: gmcli_read_idx(root)}
    for name, label in (("load_dataset", "`load_dataset`"), ("read_idx", "`read_idx` x4")):
        times = interleave({name: gmcli[name], "numpy": lambda: numpy_read(root)},
                           reps=ctx.reps, warmup=ctx.warmup, say=ctx.say, label=f"data {name}")
        section.rows.append(Row.timed(
            [f"time: {label} vs numpy", fmt_stat(Stat.of(times[name].wall), "s"),
             fmt_stat(Stat.of(times["numpy"].wall), "s")],
            times[name], times["numpy"], None,
        ))

    ctx.say("data: memory children")
    mem = {name: ctx.zygote.run(f"bench.cases.data:mem_{name}", root=root)
           for name in ("load_dataset", "read_idx", "numpy")}
    base = mem["numpy"]
    for name in ("load_dataset", "read_idx"):
        m = mem[name]
        section.rows.append(Row(
            [f"peak memory: `{name}` vs numpy",
             f"{fmt_mb(m.increase)} ({fmt_mb(m.anon_increase)})",
             f"{fmt_mb(base.increase)} ({fmt_mb(base.anon_increase)})"],
            Stat.of([m.increase / base.increase]), None,
        ))
    raw = sum((ROOT / f"{n}.gz").stat().st_size for n in FILES)
    section.notes.append(
        f"The uncompressed arrays hold {fmt_mb(70_000 * 784 + 70_000)}; the gzip files "
        f"{fmt_mb(raw)}. No target was set for this area: the ratios are reported."
    )
    section.seconds = time.perf_counter() - tic
    return section
