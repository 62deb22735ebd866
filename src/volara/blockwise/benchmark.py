"""Benchmarking: a task or pipeline run on spoofed outputs, timed per stage.

`Pipeline.benchmark` (and `BlockwiseTask.benchmark`) run the tasks as
`run_blockwise` would, on copies of the tasks that write elsewhere:

- each output a task of the pipeline declares (`output_datasets`,
  `output_paths`), and each dataset or look-up table that does not exist yet,
  is written under ``volara_benchmark_logs/spoof/`` instead;
- each graph database is a copy of the real one (`DB.spoof`);
- existing inputs are read in place, marked ``writable=False``: a task that
  would write into one is refused rather than allowed to change it;
- logs and block tracking go to ``volara_benchmark_logs/``, so every block
  runs and the real run's progress is left alone.

While the copies run, each stage of each task is timed into
``volara_benchmark_logs/benchmark.db`` (`BenchmarkLogger.trace`): ``init``
(checks and output preparation), ``Process Block Setup`` (entering
`process_block_func`, once per worker), ``Acquire Block`` (waiting for
daisy), ``Process Block``, and any stage a task traces itself through
`BlockwiseTask.get_benchmark_logger`. Then the spoofed outputs are deleted
and the report is written (`BenchmarkLogger.print_report`). The table and the
report files have volara 1.0.5's layout, so scripts reading them keep
working.

Workers started through a `worker_config` (cluster jobs) load the task from
its saved config and time nothing; the driver's stages are still recorded.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx

from .. import logging as volara_logging
from ..datasets import Dataset
from ..dbs import DB, PostgreSQL
from ..lut import LUT
from ..stores import location_key

if TYPE_CHECKING:
    from .blockwise import BlockwiseTask
    from .pipeline import Pipeline

logger = logging.getLogger(__name__)

BENCHMARK_DIR = Path("volara_benchmark_logs")
"""Where benchmarks keep their logs, block tracking, spoofed outputs and
``benchmark.db`` (relative to the working directory)."""
DEFAULT_REPORT_DIR = Path("volara_benchmark_report")
"""Where `BenchmarkLogger.print_report` writes its CSV files by default."""

Summary = dict[str, dict[str, dict[str, float]]]
_COLUMNS = (
    "task",
    "worker_id",
    "operation",
    "duration",
    "cpu_usage",
    "mem_usage",
    "io_read",
    "io_write",
)


class BenchmarkLogger:
    """Records how long named stages take, one row per stage run, in the
    SQLite table ``benchmark`` (``task, worker_id, operation, duration,
    cpu_usage, mem_usage, io_read, io_write``) of ``db_path``, which every
    process of a run writes to.

    ``duration`` is wall seconds, ``cpu_usage`` CPU seconds of the whole
    process (all its threads), ``mem_usage`` the change of its resident
    memory in bytes, ``io_read``/``io_write`` bytes it read from and wrote to
    storage (Linux; 0 elsewhere). ``worker_id`` is daisy's, -1 in the
    driver. With ``db_path=None`` nothing is recorded.
    """

    def __init__(self, db_path: Path | str | None, task: str | None):
        self.db_path = None if db_path is None else Path(db_path)
        self.task = task
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether stages are recorded."""
        return self.db_path is not None

    def __getstate__(self) -> dict[str, Any]:
        # workers get the path, and open their own connection
        return {"db_path": self.db_path, "task": self.task}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["db_path"], state["task"])  # type: ignore[misc]

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            assert self.db_path is not None
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            # workers of one run insert at once: wait for each other
            self._connection = sqlite3.connect(
                self.db_path, timeout=120, check_same_thread=False
            )
            self._connection.execute(
                f"CREATE TABLE IF NOT EXISTS benchmark ({', '.join(_COLUMNS)})"
            )
        return self._connection

    def _init_db(self) -> None:
        """Create the table (and the file) if missing."""
        if self.enabled:
            with self._lock:
                self._connect().commit()

    def log(
        self,
        worker_id: int,
        operation: str,
        duration: float,
        cpu_usage: float = 0.0,
        mem_usage: float = 0.0,
        io_read: int = 0,
        io_write: int = 0,
    ) -> None:
        """Record one run of ``operation`` that took ``duration`` seconds."""
        if not self.enabled:
            return
        row = (self.task, worker_id, operation, duration, cpu_usage, mem_usage)
        with self._lock:
            connection = self._connect()
            connection.execute(
                "INSERT INTO benchmark VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, io_read, io_write),
            )
            connection.commit()

    @contextmanager
    def trace(self, operation: str) -> Iterator[None]:
        """Time the body of the ``with`` statement as one run of
        ``operation``, also when it raises."""
        if not self.enabled:
            yield
            return
        before = _Sample.now()
        try:
            yield
        finally:
            after = _Sample.now()
            self.log(_worker_id(), operation, *after.minus(before))

    def traced(
        self, process_block: Callable[[Any], Any], operation: str
    ) -> Callable[[Any], Any]:
        """The block function ``process_block`` timing each call as
        ``operation`` (``process_block`` itself when nothing is recorded)."""
        if not self.enabled:
            return process_block

        # one named parameter: daisy tells block functions from worker
        # functions by their arity
        def traced_process_block(block: Any) -> Any:
            with self.trace(operation):
                return process_block(block)

        return traced_process_block

    def summary(self) -> Summary:
        """Per task, per stage: ``count``, ``wall_mean``, ``wall_std``,
        ``cpu_mean``, ``max_mem`` (bytes), ``read_mean`` and ``write_mean``
        (bytes); tasks in the order they first recorded, stages in the
        order they run (`partial_order`)."""
        if not self.enabled or not self.db_path.exists():  # type: ignore[union-attr]
            return {}
        with self._lock:
            rows = self._connect().execute(
                "SELECT task, operation, duration, cpu_usage, mem_usage, io_read, "
                "io_write FROM benchmark ORDER BY rowid"
            )
            grouped: dict[str, dict[str, list[tuple[float, ...]]]] = {}
            for task, operation, *values in rows:
                grouped.setdefault(task, {}).setdefault(operation, []).append(values)
        order = partial_order({t: list(ops) for t, ops in grouped.items()})
        return {
            task: {op: _stage_stats(stages[op]) for op in order if op in stages}
            for task, stages in grouped.items()
        }

    def print_report(self, out_dir: Path | str | None = None) -> Summary:
        """Write the `summary` as three tables, one row per task and one
        column per stage, to ``out_dir`` (default
        ``./volara_benchmark_report``): ``time.csv`` (``"<mean>s ± <std>
        (idle: <wall - cpu>s)"``), ``memory.csv`` (largest resident memory
        growth, MB) and ``io.csv`` (mean MB read/written). Logs the time
        table and returns the summary."""
        summary = self.summary()
        if not summary:
            logger.info("no benchmark data recorded")
            return summary
        out = Path(DEFAULT_REPORT_DIR if out_dir is None else out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stages = partial_order({t: list(s) for t, s in summary.items()})
        for name, cell in _REPORT_CELLS.items():
            with open(out / name, "w", newline="") as file:
                writer = csv.writer(file)
                writer.writerow(["task", *stages])
                for task, stats in summary.items():
                    writer.writerow(
                        [task, *(cell(stats[s]) if s in stats else "" for s in stages)]
                    )
        for task, stats in summary.items():
            logger.info(
                "benchmark %s: %s",
                task,
                "; ".join(f"{s} {_time_cell(v)}" for s, v in stats.items()),
            )
        logger.info("benchmark report written to %s", out)
        return summary


def partial_order(task_orders: dict[str, list[str]]) -> list[str]:
    """One order of all stages that keeps, as far as they agree, the order
    in which each task ran them (``{task: [stage, ...]}``); ties go to the
    stage seen first."""
    seen: list[str] = []
    before: dict[str, set[str]] = {}
    for stages in task_orders.values():
        for i, stage in enumerate(stages):
            if stage not in before:
                seen.append(stage)
                before[stage] = set()
            before[stage].update(stages[:i])
    ordered: list[str] = []
    while seen:
        waiting = set(seen)
        ready = [s for s in seen if not (before[s] - {s}) & waiting] or seen[:1]
        ordered.append(ready[0])
        seen.remove(ready[0])
    return ordered


def _stage_stats(rows: list[tuple[float, ...]]) -> dict[str, float]:
    wall, cpu, mem, read, write = (list(column) for column in zip(*rows, strict=True))
    return {
        "count": len(wall),
        "wall_mean": statistics.fmean(wall),
        "wall_std": statistics.stdev(wall) if len(wall) > 1 else 0.0,
        "cpu_mean": statistics.fmean(cpu),
        "max_mem": max(mem),
        "read_mean": statistics.fmean(read),
        "write_mean": statistics.fmean(write),
    }


def _time_cell(stats: dict[str, float]) -> str:
    idle = stats["wall_mean"] - stats["cpu_mean"]
    return f"{stats['wall_mean']:.3f}s ± {stats['wall_std']:.3f} (idle: {idle:.3f}s)"


_MB = 1024 * 1024
_REPORT_CELLS: dict[str, Callable[[dict[str, float]], str]] = {
    "time.csv": _time_cell,
    "memory.csv": lambda s: f"{s['max_mem'] / _MB:.2f} MB",
    "io.csv": lambda s: (
        f"read/write: {s['read_mean'] / _MB:.2f}/{s['write_mean'] / _MB:.2f} MB"
    ),
}


class _Sample:
    """Clocks and counters of this process at one moment."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()
        self.rss = _resident_bytes()
        self.read, self.write = _io_bytes()

    @classmethod
    def now(cls) -> _Sample:
        return cls()

    def minus(self, earlier: _Sample) -> tuple[float, float, float, int, int]:
        return (
            self.wall - earlier.wall,
            self.cpu - earlier.cpu,
            float(self.rss - earlier.rss),
            self.read - earlier.read,
            self.write - earlier.write,
        )


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _io_bytes() -> tuple[int, int]:
    try:
        with open("/proc/self/io") as file:
            fields = dict(line.split(":", 1) for line in file if ":" in line)
        return int(fields["read_bytes"]), int(fields["write_bytes"])
    except (OSError, ValueError, KeyError):
        return 0, 0


def _worker_id() -> int:
    if "DAISY_CONTEXT" not in os.environ:
        return -1
    import daisy

    try:
        return int(daisy.Context.from_env().get("worker_id", -1))
    except (KeyError, ValueError, TypeError):
        return -1


# ------------------------------------------------------------------ running


def run_benchmark(
    pipeline: Pipeline,
    multiprocessing: bool = True,
    out_dir: Path | str | None = None,
) -> Summary:
    """What `Pipeline.benchmark` does (see the module documentation)."""
    basedir = BENCHMARK_DIR.absolute()
    db_path = basedir / "benchmark.db"
    spoof_dir = basedir / "spoof"
    # leftovers of an interrupted benchmark
    db_path.unlink(missing_ok=True)
    shutil.rmtree(spoof_dir, ignore_errors=True)
    recorder = BenchmarkLogger(db_path, task=None)
    recorder._init_db()
    # restored exactly, unset included (an unset directory follows the
    # working directory)
    previous_basedir = volara_logging._log_basedir
    volara_logging.set_log_basedir(basedir)
    spoofer = _Spoofer(pipeline, spoof_dir)
    try:
        spoofed = spoofer.pipeline(pipeline, db_path)
        for task in spoofed.tasks:
            task.drop(drop_outputs=False)
        results = _run(spoofed, multiprocessing)
    finally:
        try:
            spoofer.clean_up()
        finally:
            volara_logging._log_basedir = previous_basedir
            volara_logging.ensure_daisy_log_basedir()
            summary = recorder.print_report(out_dir)
    for name, result in results.items():
        if not result.finished:
            logger.warning(
                "benchmark %s: %d of %d blocks failed or did not run; their "
                "stages are missing from the report (first error: %s)",
                name,
                result.total_block_count - result.completed_count,
                result.total_block_count,
                result.first_worker_error,
            )
    return summary


def _run(spoofed: Pipeline, multiprocessing: bool) -> dict[str, Any]:
    try:
        return spoofed.run_blockwise(multiprocessing=multiprocessing)
    except PermissionError as error:
        if "writable is False" not in str(error):
            raise
        raise PermissionError(
            f"{error}\nbenchmark reads existing inputs in place and never writes "
            "them. If the task writes this array, list it in the task's "
            "output_datasets: benchmark then writes a spoofed copy instead."
        ) from error


class _Spoofer:
    """Copies of a pipeline's tasks that write under ``spoof_dir``; one spoof
    per real dataset, table or database, shared by every task naming it."""

    def __init__(self, pipeline: Pipeline, spoof_dir: Path):
        self.spoof_dir = spoof_dir
        self.outputs = {
            location_key(path) for task in pipeline.tasks for path in task.output_paths
        }
        self.paths: dict[str, Path] = {}
        self.dbs: dict[str, DB] = {}
        self.tasks: list[BlockwiseTask] = []

    def pipeline(self, pipeline: Pipeline, db_path: Path) -> Pipeline:
        from .pipeline import Pipeline

        copies = {task: self.task(task, db_path) for task in pipeline.tasks}
        return Pipeline.from_graph(nx.relabel_nodes(pipeline.task_graph, copies))

    def task(self, task: BlockwiseTask, db_path: Path) -> BlockwiseTask:
        fields = {
            name: self.value(getattr(task, name)) for name in type(task).model_fields
        }
        # validated anew, not copied: nothing a task derived from its real
        # outputs survives into the copy
        copy = type(task).model_validate(fields)
        copy._benchmark_db = db_path
        copy._benchmark_name = task.task_name
        self.tasks.append(copy)
        return copy

    def value(self, value: Any) -> Any:
        if isinstance(value, Dataset):
            return self.dataset(value)
        if isinstance(value, LUT):
            return self.lut(value)
        if isinstance(value, DB):
            return self.db(value)
        # exact types only: a Coordinate is a tuple and must stay one
        if type(value) is list or type(value) is tuple:
            return type(value)(self.value(item) for item in value)
        if type(value) is dict:
            return {key: self.value(item) for key, item in value.items()}
        return value

    def dataset(self, dataset: Dataset) -> Dataset:
        key = location_key(dataset.store)
        if key in self.outputs or not dataset.exists():
            return dataset.model_copy(
                update={"store": self.path_for(key, dataset.name)}
            )
        return dataset.model_copy(update={"writable": False})

    def lut(self, lut: LUT) -> LUT:
        key = location_key(lut.location)
        if key in self.outputs or not lut.exists():
            spoofed = self.path_for(key, lut.name)
            return lut.model_copy(update={"path": spoofed, "s3_kwargs": None})
        return lut

    def db(self, db: DB) -> DB:
        if db.location not in self.dbs:
            # a directory each: two SQLite files may share a name
            where = self.spoof_dir / "dbs" / str(len(self.dbs))
            self.dbs[db.location] = db.spoof(where)
        return self.dbs[db.location]

    def path_for(self, key: str, name: str) -> Path:
        if key not in self.paths:
            taken = set(self.paths.values())
            path, n = self.spoof_dir / f"spoof_{name}", 2
            while path in taken:
                path, n = self.spoof_dir / f"spoof_{name}_{n}", n + 1
            self.paths[key] = path
        return self.paths[key]

    def clean_up(self) -> None:
        """Delete the spoofed outputs and databases, and the copies' block
        tracking (worker logs stay)."""
        for task in self.tasks:
            task.drop(drop_outputs=False)
        for db in self.dbs.values():
            try:
                if isinstance(db, PostgreSQL):
                    db.drop_database()
                else:
                    db.drop()
            except (ConnectionError, OSError) as error:
                logger.warning("benchmark: could not remove spoofed %s: %s", db, error)
        shutil.rmtree(self.spoof_dir, ignore_errors=True)
