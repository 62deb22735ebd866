"""How far a run is: per task of a pipeline, its blocks, how many are done
and which failed, read from daisy's block tracking without running
anything. Safe while the run goes on (daisy writes one byte per finished
block; a read sees each block done or not).

    volara-cli status pipeline.yaml
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .blockwise.blockwise import BlockwiseTask, count_blocks
from .blockwise.pipeline import Pipeline


@dataclass
class TaskStatus:
    task: str
    """The task's name (its log and tracking directory are named after it)."""
    task_type: str
    blocks: int | None
    """Blocks the task has; None while an input it needs does not exist."""
    done: int
    """Blocks recorded as finished."""
    failed: int
    """Blocks whose every attempt failed in the last run (retried by the
    next one)."""
    failed_blocks: list[str] = field(default_factory=list)
    """Write regions of the failed blocks, world units."""

    @property
    def finished(self) -> bool:
        return self.blocks is not None and self.done >= self.blocks


def pipeline_status(pipeline: Pipeline) -> list[TaskStatus]:
    """The status of every task of ``pipeline``, in dependency order."""
    return [task_status(task) for task in pipeline.tasks]


def task_status(task: BlockwiseTask) -> TaskStatus:
    try:
        blocks: int | None = count_blocks(task)
    except FileNotFoundError:
        blocks = None
    failed = task.failed_blocks() if blocks is not None else []
    return TaskStatus(
        task=task.task_name,
        task_type=str(getattr(task, "task_type", type(task).__name__)),
        blocks=blocks,
        # without its inputs a task has run no block
        done=task.done_block_count() if blocks is not None else 0,
        failed=len(failed),
        failed_blocks=[str(roi) for roi in failed],
    )


def status_as_dict(statuses: list[TaskStatus]) -> dict[str, Any]:
    return {"tasks": [asdict(status) for status in statuses]}


def describe_status(statuses: list[TaskStatus]) -> list[str]:
    """One line per task: done of blocks, failed blocks listed below it."""
    lines = []
    for status in statuses:
        blocks = "?" if status.blocks is None else str(status.blocks)
        state = "done" if status.finished else "not done"
        lines.append(
            f"{status.task} ({status.task_type}): {status.done} of {blocks} blocks "
            f"done, {status.failed} failed; {state}"
        )
        lines += [f"  failed block, write region {roi}" for roi in status.failed_blocks]
    return lines
