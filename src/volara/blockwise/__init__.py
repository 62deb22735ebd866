"""Blockwise tasks, pipelines and the task registry.

Every task is a pydantic model; ``task_a + task_b`` and ``task_a | task_b``
build a `Pipeline`. `get_task` finds a task class by its ``task_type``,
including tasks that plugin packages register under the
``volara.blockwise_tasks`` entry points.
"""

from .argmax import Argmax
from .blockwise import BlockwiseTask
from .grid import GridTask
from .pipeline import Pipeline
from .registry import (
    available_task_types,
    get_task,
    load_pipeline,
    load_task,
    pipeline_config,
    register_task,
    task_config,
)
from .relabel import Relabel
from .threshold import Threshold

BUILTIN_TASKS: list[type[BlockwiseTask]] = [Argmax, Relabel, Threshold]

__all__ = [
    "Argmax",
    "BlockwiseTask",
    "GridTask",
    "Pipeline",
    "Relabel",
    "Threshold",
    "available_task_types",
    "get_task",
    "load_pipeline",
    "load_task",
    "pipeline_config",
    "register_task",
    "task_config",
]
