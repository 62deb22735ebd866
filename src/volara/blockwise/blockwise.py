"""The base of every blockwise task, and the only module that talks to daisy.

A task declares its geometry (`write_roi`, `write_size`, `context_size`, all
in world units), its outputs and one block function (`process_block_func`).
The base turns that into a `daisy.Task`:

- geometry and inputs are checked, and outputs prepared, before any block runs;
- finished blocks are recorded by daisy 2 in a tracking zarr
  (``<meta_dir>/blocks_done.zarr``), so a rerun skips them. A block counts as
  done only when its function returned, i.e. after everything it writes is
  written. The layout the tracking was made for is kept beside it
  (``layout.json``): a rerun with another ROI or block size is refused with
  the differences instead of skipping the wrong blocks;
- with ``multiprocessing=True`` each worker is a process that enters
  `process_block_func` once and then handles blocks until none are left (in
  ``num_cache_workers`` threads if set); with a `worker_config` each worker is
  ``volara-cli blockwise-worker`` from the task's saved config, started
  through the cluster's submission command;
- with ``multiprocessing=False`` blocks run one after another in this process
  (use it for debugging);
- `benchmark` runs the task on spoofed outputs and records how long each
  stage took (see `volara.blockwise.benchmark`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import daisy.v2 as daisy
import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi
from pydantic import Field, field_validator

from .. import prefork
from ..datasets import ChunkCache, Dataset, chunk_cache_for
from ..dbs import DB
from ..logging import ensure_daisy_log_basedir, get_log_basedir
from ..lut import LUT
from ..stores import location_key
from ..utils import OpenMode, PydanticRoi, StrictBaseModel
from ..workers import AnyWorker, LocalWorker, Worker
from .benchmark import BenchmarkLogger

if TYPE_CHECKING:
    from .pipeline import Pipeline

logger = logging.getLogger(__name__)

FITS = ("valid", "overhang", "shrink")
DEFAULT_BLOCK_TIMEOUT_SECONDS = 3600.0

BlockFunction = Callable[[daisy.Block], None]


class BlockwiseTask(StrictBaseModel, ABC):
    """A blockwise operation over a volume, run by daisy.

    Subclasses provide `task_name`, `write_roi`, `write_size`,
    `context_size` and `process_block_func`; optionally `init` (prepare
    outputs), `check_config` (validate inputs before anything runs),
    `output_datasets` and `drop_artifacts`.
    """

    roi: PydanticRoi | None = None
    """Restrict the task to this region, ``[offset, shape]`` in world units.
    ``None`` processes everything the inputs cover."""
    num_workers: int = Field(default=1, ge=1)
    """Number of workers processing blocks in parallel."""
    num_cache_workers: int | None = Field(default=None, ge=1)
    """Threads per worker, each running the block function on its own blocks
    while sharing the worker's setup (e.g. one model on a GPU fed by several
    reading/writing threads). ``None``: one."""
    worker_config: AnyWorker | None = None
    """How to start workers: ``None`` starts local processes; a `SlurmWorker`
    or `LSFWorker` submits each worker as a cluster job."""
    max_retries: int = Field(default=2, ge=0)
    """How often a failed block is retried before it is reported as failed."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds a block may take before its worker is killed and the block
    retried. ``None``: the task's default (one hour for most tasks)."""

    fit: str
    """What to do with blocks that stick out of `write_roi`: ``"valid"`` skips
    them, ``"overhang"`` processes them whole, ``"shrink"`` crops them."""
    read_write_conflict: bool
    """Whether neighboring blocks must not run at the same time because one
    reads what the other writes."""

    worker_imports: ClassVar[tuple[str, ...]] = ()
    """Modules this task's workers import that are slow to import (e.g.
    torch), or ``module:function`` to call a function after the import
    (e.g. loading compiled kernels): the prefork host does it once, before
    it forks workers."""

    _out_array_dtype: np.dtype = np.dtype(np.uint8)
    # set by the pipeline that runs the task; None where it is not known
    # (see `mark_upstream_unknown`)
    _upstream_outputs: frozenset[str] | None = frozenset()
    # set by `benchmark` on the spoofed copy it runs: where stage times go,
    # and the real task's name they are reported under
    _benchmark_db: Path | None = None
    _benchmark_name: str | None = None

    @field_validator("fit")
    @classmethod
    def _check_fit(cls, fit: str) -> str:
        if fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}; got {fit!r}")
        return fit

    @field_validator("worker_config", mode="before")
    @classmethod
    def _plain_worker_runs_locally(cls, value: Any) -> Any:
        if type(value) is Worker:
            return LocalWorker(**value.model_dump())
        return value

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.task_name))

    # ----------------------------------------------------------- declarations

    @property
    @abstractmethod
    def task_name(self) -> str:
        """Unique name of this task; names its log and meta directory."""

    @property
    @abstractmethod
    def write_roi(self) -> Roi:
        """Total region written by the task, in world units."""

    @property
    @abstractmethod
    def write_size(self) -> Coordinate:
        """Size of the region each block writes, in world units."""

    @property
    @abstractmethod
    def context_size(self) -> Coordinate | tuple[Coordinate, Coordinate]:
        """Extra region read around each block, in world units: one
        Coordinate for both sides, or a (low, high) pair."""

    @abstractmethod
    def process_block_func(self) -> Any:
        """A context manager yielding the function that processes one block.

        Entered once per worker (setup such as opening arrays and DBs goes
        before the ``yield``), the yielded function is called per block.
        """

    @property
    def output_datasets(self) -> list[Dataset]:
        """Arrays this task writes (dropped by `drop_artifacts`)."""
        return []

    @property
    def output_paths(self) -> list[Path | str]:
        """Arrays and files this task creates (local paths, or urls as
        strings). In a pipeline, later tasks may name them as inputs before
        they exist."""
        return [dataset.store for dataset in self.output_datasets]

    def produced_upstream(self, path: Path | str) -> bool:
        """Whether an earlier task of the running pipeline creates ``path``."""
        return location_key(path) in (self._upstream_outputs or ())

    def mark_upstream_unknown(self) -> None:
        """Called by a worker that loaded this task from its config file
        (``volara-cli blockwise-worker``): which of its inputs earlier tasks
        of the pipeline write is not known there."""
        self._upstream_outputs = None

    def chunk_cache(self, dataset: Dataset) -> ChunkCache | None:
        """A cache of ``dataset``'s decoded chunks for a worker reading it
        block after block (see `ChunkCache`), unless it may change while
        this task runs: written by this task or by an earlier task of its
        pipeline (or not known, see `mark_upstream_unknown`)."""
        if self._upstream_outputs is None:
            return None
        written = {location_key(output) for output in self.output_paths}
        if self.produced_upstream(dataset.store) or (
            location_key(dataset.store) in written
        ):
            return None
        return chunk_cache_for(dataset.array("r"))

    def init(self) -> None:
        """One-time preparation before any block runs: create outputs."""

    def check_config(self) -> None:
        """Validate inputs and parameters that need I/O (called before `init`
        and before any block runs). Raise `ValueError` naming the field."""

    def stages(self) -> Pipeline | None:
        """The blockwise stages this task runs as, or ``None`` if it runs as
        itself (most tasks). A pipeline holding the task holds its stages
        instead (see `volara.blockwise.composite`)."""
        return None

    def check_upstream(self, upstream: list[BlockwiseTask]) -> None:
        """Raise a clear error if this task cannot follow the ``upstream``
        tasks of its pipeline (e.g. block sizes that do not nest). Called
        before any task of the pipeline prepares anything."""

    def _check_outputs_writable(self) -> None:
        for dataset in self.output_datasets:
            dataset.check_writable()

    def drop_artifacts(self) -> None:
        """Delete what the task wrote. Default: its `output_datasets`."""
        for dataset in self.output_datasets:
            dataset.drop()

    # ------------------------------------------------------------- geometry

    @property
    def block_write_roi(self) -> Roi:
        """The region one block writes, at offset zero."""
        return Roi((0,) * self.write_size.dims, self.write_size)

    @property
    def context_low_high(self) -> tuple[Coordinate, Coordinate]:
        context = self.context_size
        if isinstance(context, Coordinate):
            return context, context
        low, high = context
        return Coordinate(low), Coordinate(high)

    @property
    def block_read_roi(self) -> Roi:
        """The region one block reads, relative to its write region's offset."""
        low, high = self.context_low_high
        return self.block_write_roi.grow(low, high)

    def layout(self) -> dict[str, Any]:
        """The block layout and outputs: what a block-tracking zarr is only
        valid for."""
        low, high = self.context_low_high
        return {
            "write_roi": [list(self.write_roi.offset), list(self.write_roi.shape)],
            "write_size": list(self.write_size),
            "context_low": list(low),
            "context_high": list(high),
            "fit": self.fit,
            # task names come from output names only: without this, a run
            # writing b.zarr/seg would skip every block a.zarr/seg finished
            "outputs": [location_key(path) for path in self.output_paths],
        }

    def _unreadable_input(self) -> OSError | None:
        """An error naming this task's field whose input array is missing or
        unreadable (the dataset's own error only knows its ``store``)."""
        outputs = {location_key(path) for path in self.output_paths}
        for field in type(self).model_fields:
            dataset = getattr(self, field)
            if (
                not isinstance(dataset, Dataset)
                or location_key(dataset.store) in outputs
                or self.produced_upstream(dataset.store)
            ):
                continue
            where = f"{type(self).__name__}.{field}"
            try:
                dataset.array("r")
            except FileNotFoundError as e:
                return FileNotFoundError(f"{where}: {e}")
            except PermissionError as e:
                return PermissionError(
                    f"{where}: cannot read {dataset.store!s} ({e}). Check its "
                    "permissions."
                )
        return None

    def check_stores(self) -> None:
        """Raise a clear error naming the field if a dataset or look-up table
        of this task is on a server that does not answer, refuses the
        credentials or lacks the bucket (local stores are not checked).
        Takes seconds, not the minutes of retries a block would spend."""
        for where, stored in self._stored_things():
            stored.check_reachable(where)

    def _stored_things(self) -> Iterator[tuple[str, Dataset | LUT]]:
        """Every dataset and look-up table among the fields, with where it
        is (``Task.field``, ``Task.field[0]``, ``Task.field.stack``)."""
        for field in type(self).model_fields:
            yield from _stored_in(
                getattr(self, field), f"{type(self).__name__}.{field}"
            )

    def _names_a_field(self, error: Exception) -> bool:
        """Whether the task's own check already said which field failed."""
        return str(error).startswith(f"{type(self).__name__}.")

    def _check_databases(self) -> None:
        # before `init`, which creates outputs: a database that cannot be
        # used must not leave a half-prepared run behind
        for field in type(self).model_fields:
            db = getattr(self, field)
            if not isinstance(db, DB):
                continue
            where = f"{type(self).__name__}.{field}"
            try:
                db.check_usable()
            except (ConnectionError, PermissionError, FileNotFoundError) as e:
                raise type(e)(f"{where}: {e}") from e
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from e

    def _check_geometry(self) -> None:
        write_size, write_roi = self.write_size, self.write_roi
        low, high = self.context_low_high
        name = type(self).__name__
        # an empty region snapped to a grid comes back unbounded
        if write_roi.empty or write_roi.unbounded:
            raise ValueError(
                f"{name}: nothing to process: the write region {write_roi} is empty "
                "(check roi against the input's extent)"
            )
        if write_size.dims != write_roi.dims:
            raise ValueError(
                f"{name}: block size {tuple(write_size)} has {write_size.dims} "
                f"dimensions, the data has {write_roi.dims}"
            )
        if any(s <= 0 for s in write_size):
            raise ValueError(
                f"{name}.block_size must be positive, got {tuple(write_size)}"
            )
        if any(c < 0 for c in (*low, *high)):
            raise ValueError(f"{name}.context must not be negative")
        voxel_size = getattr(self, "voxel_size", None)
        if isinstance(voxel_size, Coordinate) and voxel_size.dims == write_size.dims:
            for what, value in [
                ("block size", write_size),
                ("context", low),
                ("context", high),
            ]:
                if value % voxel_size != Coordinate((0,) * value.dims):
                    raise ValueError(
                        f"{name}: {what} {tuple(value)} (world units) is not a "
                        f"multiple of the voxel size {tuple(voxel_size)}"
                    )

    # ---------------------------------------------------------- meta data

    @property
    def meta_dir(self) -> Path:
        """Directory of this task's logs, saved config and block tracking."""
        return get_log_basedir() / f"{self.task_name}-meta"

    @property
    def config_file(self) -> Path:
        """The task's config as JSON: what cluster workers load."""
        return self.meta_dir / "config.json"

    @property
    def block_ds(self) -> Path:
        """The zarr daisy records finished blocks in."""
        return self.meta_dir / "blocks_done.zarr"

    @property
    def layout_file(self) -> Path:
        return self.meta_dir / "layout.json"

    def init_block_array(self) -> None:
        """Create the block tracking zarr (`block_ds`, empty: no block done)
        if there is none, or make sure the existing one was made for this
        task's block layout.

        For driver loops of your own (`check_block_func`,
        `mark_block_done_func`); `run_blockwise` does not need it. The zarr
        is daisy 2's own tracking, so blocks marked here are skipped by a
        later `run_blockwise`, and the other way round.
        """
        self._check_block_layout()
        if not self.block_ds.exists():
            self._create_block_tracking()

    def _create_block_tracking(self) -> None:
        # daisy writes its tracking zarr when a run starts: a serial run in
        # which a skip mask skips every block creates it with nothing done,
        # in exactly the layout (and fingerprint) a real run expects
        from .pipeline import _daisy_context_restored

        grid = self._tracking_task().block_grid_shape
        skip_all = np.ones(grid, dtype=np.uint8)
        task = self._daisy_task(_do_nothing, None, skip_mask=skip_all)
        ensure_daisy_log_basedir()
        with _daisy_context_restored():
            daisy.run_blockwise(
                task, multiprocessing=False, progress=False, summary=False
            )

    def _check_block_layout(self) -> None:
        """Create the meta directory and make sure existing block tracking was
        made for this task's block layout."""
        self.meta_dir.mkdir(parents=True, exist_ok=True)
        layout = self.layout()
        if self.layout_file.exists():
            stored = json.loads(self.layout_file.read_text())
            changes = [
                f"{key}: was {stored.get(key)}, now {layout[key]}"
                for key in layout
                if stored.get(key) != layout[key]
            ]
            if changes and self.block_ds.exists():
                raise ValueError(
                    f"task {self.task_name!r} has finished blocks recorded for another "
                    "block layout:\n  "
                    + "\n  ".join(changes)
                    + "\nEither restore the old parameters to resume, or start over "
                    f"with task.drop(drop_outputs=False) (removes {self.meta_dir}, "
                    "keeps the outputs)."
                )
        if self.block_ds.exists():
            self._check_tracking_fits_layout()
        self.layout_file.write_text(json.dumps(layout, indent=2))

    def _check_tracking_fits_layout(self) -> None:
        # daisy keeps its own fingerprint of the block grid in the tracking
        # zarr: this catches tracking whose layout.json is missing or stale
        # before any output is touched, instead of when daisy starts
        try:
            self._tracking_task().failed_blocks()
        except RuntimeError as e:
            raise ValueError(
                f"task {self.task_name!r}: the block tracking at {self.block_ds} "
                f"does not fit this task's block layout ({e}). Restore the "
                "parameters it was made with to resume, or start over with "
                f"task.drop(drop_outputs=False) (removes {self.meta_dir}, keeps "
                "the outputs)."
            ) from e

    def done_block_count(self) -> int:
        """How many blocks the block tracking records as finished; safe to
        call while a run goes on. For a task run as stages: their sum."""
        stages = self.stages()
        if stages is not None:
            return sum(stage.done_block_count() for stage in stages.tasks)
        return _DoneMarkers(self.block_ds, self.write_roi, self.write_size).count_done()

    def failed_blocks(self) -> list[Roi]:
        """Write regions (world units) of the blocks recorded as failed and
        not done since: those whose every attempt raised or timed out. The
        next run retries them. For a task run as stages: theirs."""
        stages = self.stages()
        if stages is not None:
            return [roi for stage in stages.tasks for roi in stage.failed_blocks()]
        if not self.block_ds.exists():
            return []
        return [block.write_roi for block in self._tracking_task().failed_blocks()]

    def _tracking_task(self) -> daisy.Task:
        """The task's daisy description, for reading its block tracking."""
        return self._daisy_task(None, None)

    def write_config(self) -> Path:
        """Save this task as JSON in its meta directory and return the path."""
        from .registry import task_config

        self.meta_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(task_config(self), indent=2))
        return self.config_file

    def check_block_func(self) -> Callable[[daisy.Block], bool]:
        """A function telling whether a block is recorded as finished (by a
        run, or by `mark_block_done_func`)."""
        markers = _DoneMarkers(self.block_ds, self.write_roi, self.write_size)

        def check_block(block: daisy.Block) -> bool:
            return markers.exists() and markers.is_done(block)

        return check_block

    def mark_block_done_func(self) -> Callable[[daisy.Block], None]:
        """A function marking a processed block as successful, unless its
        status says it failed.

        Inside a daisy run daisy records the block in `block_ds` itself when
        it is released. Outside one (a driver loop of your own) the function
        records it, creating the tracking first (`init_block_array`) if
        needed, so `run_blockwise` later skips it.
        """
        markers = _DoneMarkers(self.block_ds, self.write_roi, self.write_size)

        def mark_block_done(block: daisy.Block) -> None:
            if block.status == daisy.BlockStatus.FAILED:
                return
            block.status = daisy.BlockStatus.SUCCESS
            if "DAISY_CONTEXT" in os.environ:  # a daisy worker: daisy records
                return
            if not markers.exists():
                self.init_block_array()
            markers.mark_done(block)

        return mark_block_done

    def get_benchmark_logger(self) -> BenchmarkLogger:
        """A `BenchmarkLogger` for this task: ``with
        logger.trace("stage"):`` records how long the stage took while
        `benchmark` runs the task, and does nothing in other runs."""
        return BenchmarkLogger(
            self._benchmark_db, task=self._benchmark_name or self.task_name
        )

    # ---------------------------------------------------------- execution

    def process_blocks(self) -> None:
        """Worker body: set up once, then process blocks until none are left."""
        benchmark = self.get_benchmark_logger()
        with ExitStack() as stack:
            with benchmark.trace("Process Block Setup"):
                process_block = stack.enter_context(self.process_block_func())
            process_block = benchmark.traced(process_block, "Process Block")
            acquire = benchmark.trace if benchmark.enabled else None
            threads = self.num_cache_workers or 1
            if threads == 1:
                _client_loop(process_block, acquire)
                return
            pool = [
                threading.Thread(
                    target=_client_loop, args=(process_block, acquire), daemon=True
                )
                for _ in range(threads)
            ]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()

    def worker_func(self) -> Callable[..., None]:
        """The function each worker slot runs (in its own process)."""
        if self.worker_config is None:
            return prefork.preforked(self.process_blocks)
        # a missing sbatch or an unknown queue is reported before any block
        # runs, not by every worker daisy starts
        self.worker_config.check_available()
        return self.worker_config.spawn_function(self.write_config(), self.task_name)

    def prepare_run(self) -> None:
        """Everything that happens before blocks are handed out: checks, block
        tracking, outputs. Errors here leave no block marked done."""
        # remote stores first: every later check would wait on a server
        # that does not answer
        self.check_stores()
        # check_config first: it reports inputs and dimensions that do not
        # match, which the geometry check would trip over less clearly
        try:
            self.check_config()
        except (FileNotFoundError, PermissionError) as error:
            unreadable = self._unreadable_input()
            if unreadable is None or self._names_a_field(error):
                raise
            raise unreadable from error
        self._check_outputs_writable()
        self._check_geometry()
        self._check_databases()
        self._check_block_layout()
        self.init()
        self.write_config()

    @contextmanager
    def task(
        self,
        upstream_tasks: daisy.Task | list[daisy.Task] | None = None,
        multiprocessing: bool = True,
    ) -> Iterator[daisy.Task]:
        """Prepare the run and yield the `daisy.Task` for it.

        In serial mode the block function's setup stays open until the
        context exits, so the task must be run inside the ``with`` block.
        """
        benchmark = self.get_benchmark_logger()
        with benchmark.trace("init"):
            self.prepare_run()
        with ExitStack() as stack:
            if multiprocessing:
                process_function: Callable = self.worker_func()
            else:
                with benchmark.trace("Process Block Setup"):
                    process_block = stack.enter_context(self.process_block_func())
                process_function = benchmark.traced(process_block, "Process Block")
            yield self._daisy_task(process_function, upstream_tasks)

    def _daisy_task(
        self,
        process_function: Callable | None,
        upstream_tasks: daisy.Task | list[daisy.Task] | None,
        **extra: Any,
    ) -> daisy.Task:
        low, high = self.context_low_high
        kwargs = dict(
            **extra,
            task_id=self.task_name,
            total_roi=self.write_roi.grow(low, high),
            read_roi=self.block_read_roi,
            write_roi=self.block_write_roi,
            process_function=process_function,
            read_write_conflict=self.read_write_conflict,
            fit=self.fit,
            max_workers=self.num_workers,
            max_retries=self.max_retries,
            timeout=self.block_timeout,
            tracking_path=str(self.block_ds),
        )
        if self.worker_config is not None:
            kwargs["max_worker_restarts"] = self.worker_config.restart_budget(
                self.num_workers
            )
        if not upstream_tasks:
            return daisy.Task(**kwargs)
        from daisy import v1_compat

        upstream = (
            upstream_tasks if isinstance(upstream_tasks, list) else [upstream_tasks]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return v1_compat.Task(upstream_tasks=upstream, **kwargs)

    @property
    def block_timeout(self) -> float:
        """Seconds a block may run before it is killed and retried."""
        return (
            self.timeout if self.timeout is not None else DEFAULT_BLOCK_TIMEOUT_SECONDS
        )

    def run_blockwise(
        self, multiprocessing: bool = True, **daisy_options: Any
    ) -> dict[str, Any]:
        """Run the task; returns its `TaskResult` (counts of completed,
        skipped, failed and orphaned blocks, the failed blocks) by task name.
        See `Pipeline.run_blockwise`."""
        from .pipeline import Pipeline

        return Pipeline(self).run_blockwise(
            multiprocessing=multiprocessing, **daisy_options
        )

    def process_roi(self, roi: Roi, context: Coordinate | None = None) -> None:
        """Process one region in this process, outside of daisy (for
        debugging or interactive use). Outputs must have been prepared
        (`init`)."""
        read_roi = roi if context is None else roi.grow(context, context)
        block = daisy.Block(read_roi, read_roi, roi)
        with self.process_block_func() as process_block:
            process_block(block)

    def drop(self, drop_outputs: bool = True) -> None:
        """Start over: forget the task's progress (logs, saved config, block
        tracking) and delete its outputs (`drop_artifacts`), as volara 1.0.5
        does. ``drop_outputs=False`` only forgets the progress: the next run
        processes every block again, writing over the existing outputs."""
        stages = self.stages()
        if stages is not None:
            stages.drop(drop_outputs=drop_outputs)
            return
        if self.meta_dir.exists():
            shutil.rmtree(self.meta_dir)
        if drop_outputs:
            self.drop_artifacts()

    def benchmark(
        self, multiprocessing: bool = True, out_dir: Path | str | None = None
    ) -> dict[str, dict[str, dict[str, float]]]:
        """Run the task on spoofed copies of its outputs and report how long
        each stage took; real outputs and real block tracking are never
        touched. See `Pipeline.benchmark`."""
        from .pipeline import Pipeline

        return Pipeline(self).benchmark(
            multiprocessing=multiprocessing, out_dir=out_dir
        )

    # ------------------------------------------------------------ chaining

    def __add__(self, other: BlockwiseTask | Pipeline) -> Pipeline:
        """``a + b``: run ``b`` after ``a``."""
        from .pipeline import Pipeline

        return Pipeline(self) + other

    def __or__(self, other: BlockwiseTask | Pipeline) -> Pipeline:
        """``a | b``: run ``a`` and ``b`` side by side."""
        from .pipeline import Pipeline

        return Pipeline(self) | other


def _do_nothing(block: daisy.Block) -> None:
    pass


def _stored_in(value: Any, where: str) -> Iterator[tuple[str, Dataset | LUT]]:
    if isinstance(value, Dataset | LUT):
        yield where, value
        stack = getattr(value, "stack", None)
        if stack is not None:
            yield from _stored_in(stack, f"{where}.stack")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _stored_in(item, f"{where}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _stored_in(item, f"{where}[{key!r}]")


def _client_loop(
    process_block: BlockFunction,
    acquire_trace: Callable[[str], AbstractContextManager] | None = None,
) -> None:
    # A failed block is reported to daisy (with its traceback) by
    # acquire_block and retried; the worker keeps its setup and goes on with
    # the next block instead of dying. Errors of the connection itself end
    # the worker.
    client = daisy.Client()
    while True:
        block_error: Exception | None = None
        try:
            with ExitStack() as stack:
                with acquire_trace("Acquire Block") if acquire_trace else nullcontext():
                    block = stack.enter_context(client.acquire_block())
                if block is None:
                    return
                try:
                    process_block(block)
                except Exception as error:
                    block_error = error
                    raise
        except Exception:
            if block_error is None:
                raise
            logger.exception("block %s failed; daisy will retry it", block.block_id)


def count_blocks(task: BlockwiseTask) -> int:
    """How many blocks daisy will hand out for ``task``."""
    low, high = task.context_low_high
    graph = daisy.BlockwiseDependencyGraph(
        task.task_name,
        task.block_read_roi,
        task.block_write_roi,
        task.read_write_conflict,
        task.fit,
        total_read_roi=task.write_roi.grow(low, high),
    )
    return graph.num_blocks


class _DoneMarkers:
    """daisy 2's record of finished blocks, ``<block_ds>/done`` (one uint8
    per block of the grid), read and written outside a daisy run.

    daisy keeps that array as one uncompressed chunk which it memory-maps, so
    a block's marker is one byte of the chunk file: written with ``pwrite``
    it cannot undo a marker that daisy or another process wrote at the same
    time (rewriting the chunk through zarr could). An array in any other
    layout is read and written through zarr.
    """

    def __init__(self, block_ds: Path, write_roi: Roi, write_size: Coordinate):
        self.path = block_ds / "done"
        self.origin, self.size = write_roi.offset, write_size

    def exists(self) -> bool:
        return (self.path / "zarr.json").exists()

    def count_done(self) -> int:
        """How many blocks are marked done (0 before the first run)."""
        if not self.exists():
            return 0
        try:
            return int(np.count_nonzero(zarr.open_array(str(self.path), mode="r")[...]))
        except FileNotFoundError:
            # daisy creates the chunk with the first finished block
            return 0

    def is_done(self, block: daisy.Block) -> bool:
        array, offset = self._locate(block, "r")
        chunk = self._chunk_file(array)
        if chunk is None:
            return bool(array[_grid_index(offset, array.shape)])
        with open(chunk, "rb") as file:
            return os.pread(file.fileno(), 1, offset) != b"\x00"

    def mark_done(self, block: daisy.Block) -> None:
        array, offset = self._locate(block, "r+")
        chunk = self._chunk_file(array)
        if chunk is None:
            array[_grid_index(offset, array.shape)] = 1
            return
        with open(chunk, "r+b") as file:
            os.pwrite(file.fileno(), b"\x01", offset)

    def _locate(self, block: daisy.Block, mode: OpenMode) -> tuple[zarr.Array, int]:
        array = zarr.open_array(str(self.path), mode=mode)
        index = (block.write_roi.offset - self.origin) / self.size
        if any(i < 0 or i >= n for i, n in zip(index, array.shape, strict=True)):
            raise ValueError(
                f"block with write region {block.write_roi} is outside the task's "
                f"block grid (write region starts at {self.origin}, block size "
                f"{self.size}, {tuple(array.shape)} blocks)"
            )
        return array, int(np.ravel_multi_index(tuple(index), array.shape))

    def _chunk_file(self, array: zarr.Array) -> Path | None:
        metadata = json.loads((self.path / "zarr.json").read_text())
        single_raw_chunk = (
            tuple(array.chunks) == tuple(array.shape)
            and array.dtype == np.uint8
            and [codec["name"] for codec in metadata.get("codecs", [])] == ["bytes"]
            and metadata.get("chunk_key_encoding")
            == {"name": "default", "configuration": {"separator": "/"}}
        )
        chunk = self.path.joinpath("c", *["0"] * array.ndim)
        if single_raw_chunk and chunk.is_file():
            if chunk.stat().st_size == array.nbytes:
                return chunk
        return None


def _grid_index(offset: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(offset, shape))
