"""Blockwise tasks, pipelines and the task registry.

Every task is a pydantic model; ``task_a + task_b`` and ``task_a | task_b``
build a `Pipeline`. `get_task` finds a task class by its ``task_type``,
including tasks that plugin packages register under the
``volara.blockwise_tasks`` entry points.
"""

# volara 1.0.5's module names, reachable as attributes as they were there
from . import intensity_correction as intensity_correction
from . import register as register
from .aff_agglom import AffAgglom
from .apply_shift import ApplyShift
from .argmax import Argmax
from .assemble_lut import AssembleLUT
from .blockwise import BlockwiseTask
from .clahe import CLAHE
from .compute_shift import ComputeShift
from .distance_agglom import DistanceAgglom
from .extract_frags import ExtractFrags
from .frag_seg_edge_agglom import FragSegEdgeAgglom
from .graph_mws import GraphMWS
from .graph_mws_blocks import GraphMWSBlocks
from .grid import GridTask
from .iterative_graph_mws import GraphMWSExtractFragments, IterativeGraphMWS
from .lambda_task import LambdaTask
from .pipeline import Pipeline, TaskResult
from .predict import Predict
from .registry import (
    BLOCKWISE_TASKS,
    available_task_types,
    discover_tasks,
    get_blockwise_tasks_type,
    get_task,
    load_pipeline,
    load_task,
    pipeline_config,
    register_task,
    task_config,
)
from .relabel import Relabel
from .seeded_extract_frags import SeededExtractFrags
from .threshold import Threshold

BUILTIN_TASKS: list[type[BlockwiseTask]] = [
    AffAgglom,
    ApplyShift,
    Argmax,
    AssembleLUT,
    CLAHE,
    ComputeShift,
    DistanceAgglom,
    ExtractFrags,
    FragSegEdgeAgglom,
    GraphMWS,
    GraphMWSBlocks,
    GraphMWSExtractFragments,
    IterativeGraphMWS,
    LambdaTask,
    Predict,
    Relabel,
    SeededExtractFrags,
    Threshold,
]

__all__ = [
    "AffAgglom",
    "ApplyShift",
    "Argmax",
    "AssembleLUT",
    "CLAHE",
    "ComputeShift",
    "DistanceAgglom",
    "ExtractFrags",
    "FragSegEdgeAgglom",
    "GraphMWS",
    "GraphMWSBlocks",
    "GraphMWSExtractFragments",
    "IterativeGraphMWS",
    "BlockwiseTask",
    "GridTask",
    "LambdaTask",
    "Pipeline",
    "Predict",
    "Relabel",
    "TaskResult",
    "SeededExtractFrags",
    "Threshold",
    "BLOCKWISE_TASKS",
    "available_task_types",
    "discover_tasks",
    "get_blockwise_tasks_type",
    "get_task",
    "load_pipeline",
    "load_task",
    "pipeline_config",
    "register_task",
    "task_config",
]


def __getattr__(name: str) -> bool:
    # volara 1.0.5's flag: whether the entry-point tasks have been read
    if name == "TASKS_DISCOVERED":
        from . import registry

        return registry._entry_points_loaded
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
