"""Helpers shared by the benchmark scripts: timing, memory of a process tree,
running a driver in a child process, and JSON output.

Standard library only: the volara 1.0.5 driver imports this module from its
own virtual environment.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
SAMPLE_SECONDS = 0.1


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (over all its threads)."""
    children: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children", "rb") as f:
                children.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return children


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants alive now."""
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(_children(pid))
    return pids


def rss_bytes(pid: int) -> int:
    """Resident memory of one process in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss_bytes(root: int) -> tuple[int, int]:
    """Resident memory of ``root`` and its descendants: the sum, and the
    largest of one descendant (a worker), in bytes."""
    pids = tree_pids(root)
    sizes = {pid: rss_bytes(pid) for pid in pids}
    largest_child = max((s for pid, s in sizes.items() if pid != root), default=0)
    return sum(sizes.values()), largest_child


class TreeMemory:
    """Samples the summed resident memory of a process tree in a thread.

    Worker processes come and go between samples, so a peak shorter than
    `SAMPLE_SECONDS` can be missed; the sum counts pages shared between
    processes once per process, as ``ps`` and ``top`` do.
    """

    def __init__(self, root: int | None = None):
        self.root = os.getpid() if root is None else root
        self.peak_bytes = 0
        self.peak_child_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            total, child = tree_rss_bytes(self.root)
            self.peak_bytes = max(self.peak_bytes, total)
            self.peak_child_bytes = max(self.peak_child_bytes, child)
            self._stop.wait(SAMPLE_SECONDS)

    def reset(self) -> None:
        """Start a new peak from the current figures."""
        self.peak_bytes, self.peak_child_bytes = tree_rss_bytes(self.root)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process, of its children that
    have ended, and of its children alive now with their own ended children.
    The last is volara's prefork host: it lives as long as this process, and
    the workers it forks are counted in its figures once they exit."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    ended = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    return ended + sum(
        _cpu_seconds_with_ended_children(pid) for pid in _children(os.getpid())
    )


def _cpu_seconds_with_ended_children(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime, cutime, cstime: fields 14-17 of proc(5), in clock ticks
    ticks = sum(int(field) for field in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


@contextmanager
def timed(figures: dict[str, Any], name: str, memory: TreeMemory | None = None):
    """Store the wall seconds of the ``with`` body under ``name``, its CPU
    seconds (this process and its workers) under ``<name>_cpu`` and, if
    ``memory`` is given, the peak memory of the whole tree and of its largest
    child process (a worker), in MB.

    CPU seconds hardly change when other programs compete for the cores;
    wall seconds do. On a shared machine compare both."""
    if memory is not None:
        memory.reset()
    start, start_cpu = time.perf_counter(), cpu_seconds()
    yield
    figures[name] = round(time.perf_counter() - start, 3)
    figures[f"{name}_cpu"] = round(cpu_seconds() - start_cpu, 3)
    if memory is not None:
        figures[f"{name}_peak_rss_mb"] = round(memory.peak_bytes / 2**20, 1)
        figures[f"{name}_peak_worker_rss_mb"] = round(
            memory.peak_child_bytes / 2**20, 1
        )


def run_driver(
    command: Sequence[str], log_file: Path, own_environment: bool = True
) -> dict[str, Any]:
    """Run a driver script in a child process; its last stdout line is JSON.
    Its output goes to ``log_file``; a failure raises with the log's tail.

    ``own_environment=False`` drops ``PYTHONPATH``: a driver in another
    virtual environment must not import this one's packages."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ)
    if not own_environment:
        environment.pop("PYTHONPATH", None)
    with open(log_file, "w") as log:
        process = subprocess.run(
            list(command),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=environment,
        )
        log.write(process.stdout)
    if process.returncode != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{command[1]} failed (exit {process.returncode}):\n{tail}")
    lines = [line for line in process.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{command[1]} printed no JSON; see {log_file}")
    return json.loads(lines[-1])


def print_json(figures: dict[str, Any]) -> None:
    """The result of a benchmark: one JSON object on stdout."""
    print(json.dumps(figures, indent=2, sort_keys=False))
    sys.stdout.flush()


def ratio(numerator: float, denominator: float) -> float | None:
    if not denominator:
        return None
    return round(numerator / denominator, 3)


def repeat_seconds(function, repeats: int) -> list[float]:
    """Wall seconds of each of ``repeats`` calls of ``function``."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(round(time.perf_counter() - start, 4))
    return seconds


def do_nothing(block: Any) -> None:
    """A block function for daisy alone; here, so that a daisy worker
    unpickling it imports nothing heavy."""


def interleaved(items: Sequence[T], repeats: int) -> Iterator[T]:
    """``a b a b ...``: alternating keeps a slow minute of a shared machine
    from landing on one side only."""
    for _ in range(repeats):
        yield from items
