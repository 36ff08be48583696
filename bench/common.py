"""What every benchmark area shares: timing, memory, machine facts and the Markdown tables.

Timing (:func:`interleave`): W warm-up calls, then R repetitions in which every
candidate runs once, the order reversed on every other repetition (A B, B A,
A B ...), so that a slow spell of the shared machine hits both sides. A figure
is the median with its min-max range; a ratio is the median of the per-
repetition ratios candidate / baseline, with their range (a pair runs back to
back, so its ratio is less noisy than a ratio of medians).

Memory (:class:`Zygote`): one fresh Python process imports the libraries once,
then forks a fresh child per task, and reads that child's own peak resident set
size from ``os.wait4`` (the per-child ``ru_maxrss`` that
``getrusage(RUSAGE_CHILDREN)`` would merge over all children). The child also
reports its resident size when the task starts, so the task's own increase
excludes the imports, and samples its anonymous (heap) memory every 2 ms: the
resident size also counts file-backed pages (library code, memory-mapped arrays),
which the kernel can drop; the anonymous part is what a task holds.
tracemalloc would miss torch's allocator, so it is not used. The children run
with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``): by
default glibc raises it after large blocks are freed and then keeps freed heap
that it trims when it likes, which moved the resident size of one detection run
by up to 40 MB at random; fixed, freed batches of activations go back at once and
the figures measure what the task holds.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MB = 1024.0 * 1024.0
# glibc returns freed blocks of this size and more to the system at once (see the module doc).
MMAP_THRESHOLD = "131072"


# ---------------------------------------------------------------- settings of one call


@dataclass
class Context:
    """Settings of one suite call, and what areas hand to each other.

    Attributes:
        quick: one repetition and tiny sizes (the smoke test).
        threads: torch's intra-op threads in this process and in every child.
        work: a scratch folder (runs, adversarial sets), removed by the caller.
        reps: timed repetitions per comparison; warmup: untimed calls first.
        shared: fixtures made by one area and reused by the next (a trained run,
            an adversarial set), see :mod:`bench.fixtures`.
        zygote: the process that forks the memory children (started early).
    """

    quick: bool
    threads: int
    work: Path
    reps: int
    warmup: int
    shared: dict[str, Any] = field(default_factory=dict)
    zygote: Zygote | None = None

    def say(self, message: str) -> None:
        """Progress on stderr (the suite's only output besides the report)."""
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- figures


@dataclass(frozen=True)
class Stat:
    """Median and range of repeated measurements (seconds, bytes or a ratio)."""

    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        if not values:
            raise ValueError("Stat.of: no values")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def scaled(self, factor: float) -> Stat:
        """The same figure in another unit (``factor`` > 0)."""
        return Stat(self.median * factor, self.lo * factor, self.hi * factor, self.n)

    def inverse(self, numerator: float = 1.0) -> Stat:
        """numerator / value, for a throughput from times (range flips)."""
        return Stat(numerator / self.median, numerator / self.hi, numerator / self.lo, self.n)


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> Stat:
    """Median and range of a_i / b_i over repetitions run back to back."""
    if len(a) != len(b):
        raise ValueError(f"paired_ratio: {len(a)} candidate and {len(b)} baseline values")
    return Stat.of([x / y for x, y in zip(a, b)])


@dataclass
class Samples:
    """Seconds of one candidate per repetition: wall clock, and this process's CPU time.

    CPU time leaves out the time spent waiting for a core of the shared machine
    (and for the disk); with several torch threads it adds up all of them.
    """

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def interleave(
    candidates: dict[str, Callable[[], Any]], *, reps: int, warmup: int,
    say: Callable[[str], None] | None = None, label: str = "",
) -> dict[str, Samples]:
    """Seconds of every candidate, repetitions interleaved (see the module doc).

    Returns:
        name -> its samples, in repetition order (so that ratios can be paired).
    """
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times = {name: Samples() for name in names}
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            candidates[name]()
            times[name].cpu.append(time.process_time() - cpu)
            times[name].wall.append(time.perf_counter() - wall)
        if say is not None:
            shown = ", ".join(f"{n} {times[n].wall[-1]:.3g}s" for n in names)
            say(f"{label} rep {r + 1}/{reps}: {shown}")
    return times


# ---------------------------------------------------------------- memory


def proc_status(pid: str = "self") -> dict[str, int]:
    """Sizes (bytes) of /proc/<pid>/status: VmRSS, VmHWM, RssAnon, RssFile."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) * 1024
    return out


class AnonSampler:
    """Samples this process's anonymous resident memory every ``period`` seconds."""

    def __init__(self, period: float = 0.002) -> None:
        self.period = period
        self.peak = proc_status()["RssAnon"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_status()["RssAnon"])
            self._stop.wait(self.period)

    def __enter__(self) -> AnonSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, proc_status()["RssAnon"])


@dataclass(frozen=True)
class MemResult:
    """One task's memory in its own process (bytes).

    ``peak_rss`` is the child's ru_maxrss; ``start_rss`` its resident size when the
    task began (the libraries already imported); ``anon_start`` / ``anon_peak``
    the anonymous part, sampled.
    """

    peak_rss: int
    start_rss: int
    anon_start: int
    anon_peak: int
    seconds: float

    @property
    def increase(self) -> int:
        """What the task added to the resident size: peak - start."""
        return self.peak_rss - self.start_rss

    @property
    def anon_increase(self) -> int:
        return self.anon_peak - self.anon_start


class Zygote:
    """A fresh process that imports the libraries once and forks one child per task.

    Started early (:meth:`start`) so that its imports overlap the main process's;
    :meth:`run` sends one task and waits for its figures. Tasks are functions
    ``module:function(**kwargs)`` returning the callable to measure; the module is
    imported before the fork, so imports are not counted as the task's memory.
    """

    def __init__(self, threads: int, preload: Sequence[str]) -> None:
        self.threads = threads
        self.preload = list(preload)
        self.proc: subprocess.Popen[str] | None = None
        self._ready = False

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.child", str(self.threads), *self.preload],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO), "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD},
        )

    def wait_ready(self) -> None:
        if self._ready:
            return
        if self.proc is None:
            self.start()
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"bench.child did not start: {line!r}")
        self._ready = True

    def run(self, task: str, **kwargs: Any) -> MemResult:
        """Run one task in a fresh child and return its figures."""
        return self.run_together([(task, kwargs)])[0]

    def run_together(self, tasks: Sequence[tuple[str, dict[str, Any]]]) -> list[MemResult]:
        """Run tasks in fresh children at the same time (their files must not overlap).

        Each child's figures are its own, so running them together changes their
        time, not their memory.
        """
        self.wait_ready()
        request = [{"task": task, "kwargs": kwargs} for task, kwargs in tasks]
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        out = []
        for (task, _), reply in zip(tasks, json.loads(self.proc.stdout.readline())):
            if not reply.get("ok"):
                raise RuntimeError(f"memory task {task} failed: {reply.get('error')}")
            out.append(MemResult(
                peak_rss=reply["maxrss_kb"] * 1024,
                start_rss=reply["start_rss"],
                anon_start=reply["anon_start"],
                anon_peak=reply["anon_peak"],
                seconds=reply["seconds"],
            ))
        return out

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


# ---------------------------------------------------------------- machine


def machine() -> dict[str, str]:
    """CPU, cores, load, versions and commit, for the report's header."""
    import numpy
    import torch

    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "numpy": numpy.__version__}
    for name in ("foolbox", "gmcli"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # not installed as a distribution
            versions[name] = "?"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
            timeout=10,
        ).stdout.strip() or "?"
    except OSError:
        commit = "?"
    return {
        "cpu": cpu,
        "cores": f"{os.cpu_count()} logical, {len(os.sched_getaffinity(0))} usable",
        "load": "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "commit": commit,
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------- the report


@dataclass
class Row:
    """One line of an area's table; ``ratio`` against ``target`` (None: reported only).

    ``alt_ratio``: the same comparison by a second measure (CPU time for timings), shown
    in the section's ``alt_label`` column as a second opinion.
    """

    cells: list[str]
    ratio: Stat
    target: float | None = None
    alt_ratio: Stat | None = None

    @classmethod
    def timed(cls, cells: list[str], a: Samples, b: Samples, target: float | None) -> Row:
        """A row comparing candidate ``a`` with baseline ``b`` (wall and CPU ratios)."""
        return cls(cells, paired_ratio(a.wall, b.wall), target, paired_ratio(a.cpu, b.cpu))

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "reported"
        return "met" if self.ratio.median <= self.target else "MISSED"


@dataclass
class Section:
    """One area of the report: a heading, how it was measured, a table, findings."""

    key: str
    title: str
    method: list[str]
    columns: list[str]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    alt_label: str = "CPU-time ratio"

    def markdown(self) -> str:
        alt = any(row.alt_ratio is not None for row in self.rows)
        head = [*self.columns, "ratio (range)", *([self.alt_label] if alt else []),
                "target", "verdict"]
        lines = [f"## {self.title}", ""]
        lines += [" ".join(self.method), ""]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---" for _ in head) + "|")
        for row in self.rows:
            cells = [*row.cells, fmt_ratio(row.ratio)]
            if alt:
                cells.append("-" if row.alt_ratio is None else fmt_ratio(row.alt_ratio))
            cells += ["-" if row.target is None else f"<= {row.target:.2f}", row.verdict]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for note in self.notes:
            lines.append(f"- {note}")
        if self.notes:
            lines.append("")
        lines.append(f"_Area time: {self.seconds:.0f} s._")
        lines.append("")
        return "\n".join(lines)


def fmt_ratio(r: Stat) -> str:
    if r.n == 1 or r.lo == r.hi:
        return f"{r.median:.3f}"
    return f"{r.median:.3f} ({r.lo:.3f}-{r.hi:.3f})"


def fmt_stat(s: Stat, unit: str, digits: int = 3) -> str:
    """``12.3 ms (11.9-13.0)``: median, then range, in ``unit`` (s, ms, MB, /s)."""
    factor = {"s": 1.0, "ms": 1e3, "MB": 1 / MB, "/s": 1.0, "": 1.0}[unit]
    v = s.scaled(factor)

    def num(x: float) -> str:
        if abs(x) >= 10 ** digits:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"

    suffix = f" {unit}" if unit else ""
    if v.n == 1 or v.lo == v.hi:
        return f"{num(v.median)}{suffix}"
    return f"{num(v.median)}{suffix} ({num(v.lo)}-{num(v.hi)})"


def fmt_mb(n_bytes: float) -> str:
    return f"{n_bytes / MB:.1f} MB"
