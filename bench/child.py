"""The memory zygote: ``python -m bench.child THREADS MODULE [MODULE ...]``.

Imports the modules, prints ``ready``, then reads JSON requests from stdin, one a
line: a list of ``{"task": "module:function", "kwargs": {...}}``. It forks one
fresh child per task (the tasks of a line run at the same time). A child calls
``function(**kwargs)`` (cheap set-up; it returns the callable to measure), records
its resident size, runs the callable while sampling its anonymous memory, and
writes its figures to a pipe. The zygote reaps each child with ``os.wait4``, adds
the child's own ``ru_maxrss``, and answers with one JSON line: the list of figures,
in the order of the tasks. See :mod:`bench.common` for what the figures mean.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import sys
import time
import traceback
import warnings


def _child(request: dict, out_fd: int, threads: int) -> None:
    """In the forked child: run one task and write its figures to ``out_fd``."""
    import torch

    from bench.common import AnonSampler, proc_status

    os.dup2(2, 1)  # stdout is the zygote's reply channel: nothing of the task may land there
    try:
        torch.set_num_threads(threads)
        module, _, name = request["task"].partition(":")
        task = getattr(importlib.import_module(module), name)(**request["kwargs"])
        gc.collect()
        start = proc_status()
        tic = time.perf_counter()
        with AnonSampler() as sampler:
            task()
        reply = {
            "ok": True,
            "start_rss": start["VmRSS"],
            "anon_start": start["RssAnon"],
            "anon_peak": sampler.peak,
            "seconds": time.perf_counter() - tic,
        }
    except BaseException:
        reply = {"ok": False, "error": traceback.format_exc()[-3000:]}
    data = json.dumps(reply).encode()
    while data:
        data = data[os.write(out_fd, data):]
    os.close(out_fd)


def main(argv: list[str]) -> None:
    threads = int(argv[0])
    import torch

    torch.set_num_threads(threads)
    logging.getLogger("gmcli").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in argv[1:]:
        importlib.import_module(name)
    gc.collect()
    print("ready", flush=True)

    for line in sys.stdin:
        if not line.strip():
            continue
        children = [_fork(request, threads) for request in json.loads(line)]
        replies = []
        for pid, read_fd in children:
            with os.fdopen(read_fd, "rb") as f:
                data = f.read()
            _, status, usage = os.wait4(pid, 0)
            reply = json.loads(data) if data else {"ok": False, "error": f"child died ({status})"}
            reply["maxrss_kb"] = usage.ru_maxrss
            replies.append(reply)
        print(json.dumps(replies), flush=True)


def _fork(request: dict, threads: int) -> tuple[int, int]:
    """Fork a child for one task; return its pid and the read end of its reply pipe."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        code = 0
        try:
            _child(request, write_fd, threads)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write_fd)
    return pid, read_fd


if __name__ == "__main__":
    main(sys.argv[1:])
