"""Tasks that run as several blockwise stages.

Some operations need more than one pass over the volume: agglomerating a
fragment graph level by level decides segments in one pass, joins the edges
between them in a second, and assembles the look-up table in a third. Such a
task is a model with its own fields (and config, and ``task_type``) whose
`BlockwiseTask.stages` are ordinary blockwise tasks; `CompositeTask` is the
base of tasks that always run that way. A `Pipeline` built from such a task
holds the stages instead, so daisy runs each stage's blocks as
soon as the blocks they read are done, and each stage keeps its own block
tracking, logs and worker configs (cluster workers run stages, never the
composite itself).
"""

from __future__ import annotations

from abc import abstractmethod
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from funlib.geometry import Coordinate, Roi

from .blockwise import BlockwiseTask

if TYPE_CHECKING:
    from .pipeline import Pipeline


class CompositeTask(BlockwiseTask):
    """A task made of blockwise stages (see the module docstring)."""

    @abstractmethod
    def stages(self) -> Pipeline:
        """The stages, with the dependencies between them."""

    @property
    def write_roi(self) -> Roi:
        return self._stage_tasks()[-1].write_roi

    @property
    def write_size(self) -> Coordinate:
        return self._stage_tasks()[-1].write_size

    @property
    def context_size(self) -> Coordinate:
        return Coordinate((0,) * self.write_roi.dims)

    def _stage_tasks(self) -> list[BlockwiseTask]:
        return self.stages().tasks

    def drop_artifacts(self) -> None:
        for stage in self._stage_tasks():
            stage.drop_artifacts()

    @contextmanager
    def process_block_func(self):
        raise TypeError(
            f"{type(self).__name__} runs as the stages "
            f"{[t.task_name for t in self._stage_tasks()]}: run it with "
            "run_blockwise, or run a stage's process_block_func"
        )
        yield  # pragma: no cover


def stage_options(task: BlockwiseTask) -> dict[str, Any]:
    """The fields a task's stages take from it: workers, retries, timeout."""
    return {
        "num_workers": task.num_workers,
        "num_cache_workers": task.num_cache_workers,
        "worker_config": task.worker_config,
        "max_retries": task.max_retries,
        "timeout": task.timeout,
    }
