"""Graphs of tasks, run by daisy in one go.

``a + b`` runs ``b`` after ``a`` (every task of ``a`` without a successor
feeds every task of ``b`` without a predecessor); ``a | b`` runs them side by
side. daisy schedules the whole graph at once: a block of a downstream task
starts as soon as the upstream blocks it reads are done, and never on top of a
failed one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

import daisy.v2 as daisy
import networkx as nx
from funlib.geometry import Roi

from .. import prefork
from ..logging import ensure_daisy_log_basedir
from ..stores import location_key

if TYPE_CHECKING:
    from .blockwise import BlockwiseTask

logger = logging.getLogger(__name__)


class Pipeline:
    """A directed acyclic graph of `BlockwiseTask` s."""

    task_graph: nx.DiGraph

    def __init__(self, task: BlockwiseTask | None = None):
        self.task_graph = nx.DiGraph()
        if task is not None:
            self.task_graph.add_node(task)
            self.task_graph = _stages_expanded(self.task_graph)

    @classmethod
    def from_graph(cls, graph: nx.DiGraph) -> Pipeline:
        """A pipeline running the tasks of ``graph`` (an edge ``(a, b)``
        runs ``b`` after ``a``); a `CompositeTask` in it is replaced by its
        stages."""
        if not nx.is_directed_acyclic_graph(graph):
            raise ValueError("a pipeline's task graph must not have cycles")
        pipeline = cls()
        pipeline.task_graph = _stages_expanded(graph)
        return pipeline

    @property
    def tasks(self) -> list[BlockwiseTask]:
        """The tasks in an order that respects their dependencies."""
        return list(nx.topological_sort(self.task_graph))

    def _merged_with(
        self, other: Pipeline | BlockwiseTask
    ) -> tuple[nx.DiGraph, Pipeline]:
        other = _as_pipeline(other)
        graph = nx.DiGraph()
        graph.add_nodes_from(self.task_graph.nodes)
        graph.add_edges_from(self.task_graph.edges)
        graph.add_nodes_from(other.task_graph.nodes)
        graph.add_edges_from(other.task_graph.edges)
        return graph, other

    def __add__(self, other: Pipeline | BlockwiseTask) -> Pipeline:
        graph, other = self._merged_with(other)
        sinks = [t for t in self.task_graph if self.task_graph.out_degree(t) == 0]
        sources = [t for t in other.task_graph if other.task_graph.in_degree(t) == 0]
        graph.add_edges_from(product(sinks, sources))
        return Pipeline.from_graph(graph)

    def __or__(self, other: Pipeline | BlockwiseTask) -> Pipeline:
        graph, _ = self._merged_with(other)
        return Pipeline.from_graph(graph)

    def __radd__(self, other: BlockwiseTask) -> Pipeline:
        return _as_pipeline(other) + self

    def __ror__(self, other: BlockwiseTask) -> Pipeline:
        return _as_pipeline(other) | self

    def __repr__(self) -> str:
        edges = ", ".join(
            f"{u.task_name} -> {v.task_name}" for u, v in self.task_graph.edges
        )
        names = ", ".join(t.task_name for t in self.tasks)
        return f"Pipeline(tasks=[{names}], edges=[{edges}])"

    def _check_unique_names(self) -> None:
        names = [task.task_name for task in self.task_graph]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"two tasks of this pipeline share the name(s) {duplicates}: they "
                "would share logs and block tracking. Give their outputs different "
                "names."
            )

    def run_blockwise(
        self, multiprocessing: bool = True, **daisy_options: Any
    ) -> dict[str, Any]:
        """Prepare every task (checks, outputs) in dependency order, then run
        the whole graph in one daisy run.

        Returns a `TaskResult` per task name, in dependency order. Extra
        keyword arguments go to `daisy.run_blockwise` (e.g.
        ``progress=False``).

        A block whose function raises is retried up to the task's
        ``max_retries`` times, then counted as failed (its traceback is in
        the execution summary and the worker's log); the blocks of later
        tasks that read it never run (``orphaned_count``). With
        ``multiprocessing=False`` the first error is raised instead, so a
        debugger stops there.
        """
        self._check_unique_names()
        self._tell_tasks_their_upstream_outputs()
        for task in self.tasks:
            task.check_upstream(list(nx.ancestors(self.task_graph, task)))
        # every task's remote stores before any task prepares its outputs: a
        # wrong endpoint in the last task leaves nothing half-made behind
        for task in self.tasks:
            task.check_stores()
        ensure_daisy_log_basedir()
        self._start_worker_host(multiprocessing)
        with ExitStack() as stack:
            stack.enter_context(_daisy_context_restored())
            daisy_tasks = {
                task: stack.enter_context(task.task(multiprocessing=multiprocessing))
                for task in self.tasks
            }
            pipeline = daisy.Pipeline(
                list(daisy_tasks.values()),
                [(daisy_tasks[u], daisy_tasks[v]) for u, v in self.task_graph.edges],
            )
            states = daisy.run_blockwise(
                pipeline,
                multiprocessing=multiprocessing,
                return_states=True,
                **daisy_options,
            )
        return {
            task.task_name: TaskResult(states[task.task_name], task.failed_blocks())
            for task in self.tasks
            if task.task_name in states
        }

    def _start_worker_host(self, multiprocessing: bool) -> None:
        # started before the tasks are prepared, so that its imports overlap
        # with the preparation instead of delaying the first worker
        local = [task for task in self.tasks if task.worker_config is None]
        if multiprocessing and local and prefork.enabled():
            preload = sorted(
                {module for task in local for module in task.worker_imports}
            )
            prefork.started_host_address(tuple(preload))

    def _tell_tasks_their_upstream_outputs(self) -> None:
        for task in self.task_graph:
            task._upstream_outputs = frozenset(
                location_key(path)
                for upstream in nx.ancestors(self.task_graph, task)
                for path in upstream.output_paths
            )

    def benchmark(
        self, multiprocessing: bool = True, out_dir: Path | str | None = None
    ) -> dict[str, dict[str, dict[str, float]]]:
        """Run the pipeline on spoofed outputs, as volara 1.0.5 does, and
        report how long each stage of each task took.

        The tasks run as in `run_blockwise`, but every output is written to a
        spoofed copy under ``volara_benchmark_logs/spoof/`` (deleted
        afterwards), every graph database is a copy of the real one, and
        existing inputs are read in place and never written. Block tracking
        and logs go to ``volara_benchmark_logs/``: every block runs, and the
        real run's progress is untouched. Stage times (``init``, ``Process
        Block Setup``, ``Acquire Block``, ``Process Block`` and stages tasks
        trace themselves) are written as ``time.csv``, ``memory.csv`` and
        ``io.csv`` to ``out_dir`` (default ``./volara_benchmark_report``) and
        returned as ``{task name: {stage: {"count", "wall_mean",
        "wall_std", "cpu_mean", "max_mem", "read_mean", "write_mean"}}}``
        (seconds, bytes). See `volara.blockwise.benchmark`.
        """
        from .benchmark import run_benchmark

        return run_benchmark(self, multiprocessing=multiprocessing, out_dir=out_dir)

    def drop(self, drop_outputs: bool = True) -> None:
        """`BlockwiseTask.drop` every task of the pipeline: forget their
        progress and, unless ``drop_outputs=False``, delete their outputs."""
        for task in self.task_graph:
            task.drop(drop_outputs=drop_outputs)


@contextmanager
def _daisy_context_restored() -> Iterator[None]:
    # daisy leaves the run's DAISY_CONTEXT in this process's environment;
    # subprocesses started later (another volara-cli, a worker of the next
    # run) would take it for theirs and log into this run's directory.
    before = os.environ.get("DAISY_CONTEXT")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DAISY_CONTEXT", None)
        else:
            os.environ["DAISY_CONTEXT"] = before


class TaskResult:
    """How one task's run went: daisy's task state (``total_block_count``,
    ``completed_count``, ``skipped_count``, ``failed_count``,
    ``orphaned_count``, ``first_worker_error``, ... read through unchanged)
    plus `failed_blocks`."""

    def __init__(self, state: Any, failed_blocks: list[Roi]):
        self.state = state
        self.failed_blocks = failed_blocks
        """Write regions (world units) of the blocks that failed for good;
        see `BlockwiseTask.failed_blocks`."""

    @property
    def finished(self) -> bool:
        """Whether every block of the task is done (run now or earlier)."""
        return self.state.completed_count == self.state.total_block_count

    def __getattr__(self, name: str) -> Any:
        if name == "state":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.state, name)

    def __repr__(self) -> str:
        return f"TaskResult({self.state!r}, failed_blocks={self.failed_blocks})"


def _stages_expanded(graph: nx.DiGraph) -> nx.DiGraph:
    """``graph`` with every task that runs as stages (`BlockwiseTask.stages`)
    replaced by them: what ran before the task runs before its first
    stages, what ran after it after its last ones."""
    staged = {task: task.stages() for task in graph}
    staged = {task: stages for task, stages in staged.items() if stages is not None}
    if not staged:
        return graph
    graph = graph.copy()
    for task, pipeline in staged.items():
        stages = pipeline.task_graph
        firsts = [t for t in stages if stages.in_degree(t) == 0]
        lasts = [t for t in stages if stages.out_degree(t) == 0]
        before = list(graph.predecessors(task))
        after = list(graph.successors(task))
        graph.remove_node(task)
        graph.add_nodes_from(stages.nodes)
        graph.add_edges_from(stages.edges)
        graph.add_edges_from(product(before, firsts))
        graph.add_edges_from(product(lasts, after))
    return graph


def _as_pipeline(value: Pipeline | BlockwiseTask) -> Pipeline:
    from .blockwise import BlockwiseTask

    if isinstance(value, Pipeline):
        return value
    if isinstance(value, BlockwiseTask):
        return Pipeline(value)
    raise TypeError(f"cannot chain a {type(value).__name__} into a pipeline")
