"""Find task classes by ``task_type``, and load tasks and pipelines from
JSON / YAML configs.

Built-in tasks and plugin tasks are found the same way: through the
``volara.blockwise_tasks`` entry points, read on first use. A config names its
task by ``task_type``; that is all a cluster worker needs to rebuild it.

volara 1.0.5's names for the registry stay: `BLOCKWISE_TASKS` (the list
of registered classes), `discover_tasks` and `get_blockwise_tasks_type`. One
class may be listed under several entry-point names (``relabel`` and volara
1.0.5's ``lut`` both name `Relabel`); it is registered once.

When a plugin registers a ``task_type`` that a built-in task has (volara-torch
and volara-ml register ``predict``), **the built-in task keeps the plain
name** and the plugin's task is reachable by its distribution and name,
``"<distribution>:<task_type>"``, e.g. ``"volara-torch:predict"``, in configs
and in `get_task`. Such a task writes its configs with that qualified name, so
cluster workers rebuild the same class. Every entry-point task can be named
that way (``"volara:predict"`` is the built-in one).

Config files are plain data: they are parsed with ``json`` or
``yaml.safe_load`` and validated by the task models. Nothing in them is
evaluated or unpickled, with two exceptions, both of which execute code: a
`LambdaTask` whose ``lambda_func`` is a base64 cloudpickle (the volara 1
form) unpickles it (name the function as ``"package.module:function"``
instead), and a `Predict` whose network file (``checkpoint.save_path``) was
saved whole with ``torch.save`` is unpickled by torch when the task runs (a
TorchScript file is not). Load such configs, and networks, only from people
you trust.
"""

from __future__ import annotations

import functools
import json
import logging
import operator
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from pydantic import Field, TypeAdapter

if TYPE_CHECKING:
    from .blockwise import BlockwiseTask
    from .pipeline import Pipeline

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "volara.blockwise_tasks"

_registry: dict[str, type[BlockwiseTask]] = {}
# "<distribution>:<task_type>" of every entry-point task, and the name a
# class shadowed by a built-in task is written under
_qualified: dict[str, type[BlockwiseTask]] = {}
_shadowed_names: dict[type[BlockwiseTask], str] = {}
_entry_points_loaded = False

BLOCKWISE_TASKS: list[type[BlockwiseTask]] = []
"""Every registered task class, once each, in the order registered (as in
volara 1.0.5). A class appended here directly is registered on the next
look-up."""


def register_task(task_class: type[BlockwiseTask]) -> None:
    """Make ``task_class`` findable by its ``task_type``. Plugins normally
    register through entry points instead. Registering a class again is a
    no-op; a second class claiming a registered ``task_type`` is refused."""
    task_type = _task_type_of(task_class)
    known = _registry.get(task_type)
    if known is not None and known is not task_class:
        raise ValueError(
            f"task_type {task_type!r} is claimed by both {_qualname(known)} and "
            f"{_qualname(task_class)}"
        )
    _registry[task_type] = task_class
    if task_class not in BLOCKWISE_TASKS:
        BLOCKWISE_TASKS.append(task_class)


def _register_listed() -> None:
    """Register classes appended to `BLOCKWISE_TASKS` by hand, as volara
    1.0.5 allowed."""
    for task_class in list(BLOCKWISE_TASKS):
        if _registry.get(_task_type_of(task_class)) is not task_class:
            register_task(task_class)


def _task_type_of(task_class: type[BlockwiseTask]) -> str:
    field = task_class.model_fields.get("task_type")
    if field is None or not isinstance(field.default, str):
        raise TypeError(
            f"{_qualname(task_class)} needs a `task_type: Literal[...] = ...` field "
            "with a default to be registered"
        )
    return field.default


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _load_entry_points() -> None:
    global _entry_points_loaded
    if not _entry_points_loaded:
        _entry_points_loaded = True
        discover_tasks()
    _register_listed()


def discover_tasks() -> None:
    """Register the built-in tasks and every class named by a
    ``volara.blockwise_tasks`` entry point, reading the installed entry
    points again (so plugins installed since the last call are found). A
    plugin that cannot be imported is skipped with a warning; one whose
    ``task_type`` a built-in task has is reachable only by its qualified
    name (see the module's documentation)."""
    from . import BUILTIN_TASKS

    for task_class in BUILTIN_TASKS:
        register_task(task_class)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            task_class = entry_point.load()
            task_type = _task_type_of(task_class)
        except Exception as e:
            logger.warning(
                "could not load volara task plugin %r (%s): %s",
                entry_point.name,
                entry_point.value,
                e,
            )
            continue
        distribution = entry_point.dist.name if entry_point.dist else "unknown"
        qualified = f"{distribution}:{task_type}"
        _qualified[qualified] = task_class
        builtin = _registry.get(task_type)
        if builtin in BUILTIN_TASKS and builtin is not task_class:
            _shadowed_names[task_class] = qualified
            logger.debug(
                "task_type %r names volara's %s; %s's task is %r",
                task_type,
                _qualname(builtin),
                distribution,
                qualified,
            )
            continue
        register_task(task_class)


def config_task_type(task_class: type[BlockwiseTask]) -> str:
    """The ``task_type`` a config of ``task_class`` is written with: its
    own, or ``"<distribution>:<task_type>"`` for a plugin task whose name a
    built-in task has."""
    _load_entry_points()
    return _shadowed_names.get(task_class, _task_type_of(task_class))


def get_blockwise_tasks_type() -> TypeAdapter:
    """A pydantic `TypeAdapter` that validates any registered task from its
    config, choosing the class by ``task_type`` (volara 1.0.5's way to load
    tasks; `load_task` does the same)."""
    _load_entry_points()
    classes = tuple(dict.fromkeys(_registry.values()))
    # a union of classes known only at run time: beyond what type checkers see
    union: Any = functools.reduce(operator.or_, classes)
    return TypeAdapter(Annotated[union, Field(discriminator="task_type")])


def available_task_types() -> list[str]:
    """Every known ``task_type``, built in or from plugins, and the
    qualified names of plugin tasks a built-in task shadows."""
    _load_entry_points()
    return sorted([*_registry, *_shadowed_names.values()])


def get_task(task_type: str) -> type[BlockwiseTask]:
    """The task class registered for ``task_type``, or for a qualified
    ``"<distribution>:<task_type>"``."""
    _load_entry_points()
    task_class = _registry.get(task_type) or _qualified.get(task_type)
    if task_class is None:
        raise ValueError(
            f"unknown task_type {task_type!r}; known task types: "
            f"{', '.join(available_task_types())}. A plugin task must be installed "
            f"and registered under the {ENTRY_POINT_GROUP!r} entry points."
        )
    return task_class


def load_task(config: dict[str, Any]) -> BlockwiseTask:
    """Build a task from its config dict (as written by ``model_dump``)."""
    if not isinstance(config, dict) or "task_type" not in config:
        raise ValueError("a task config is a mapping with a 'task_type' key")
    if not isinstance(config["task_type"], str):
        raise ValueError(
            f"task_type must be a string naming a task, got {config['task_type']!r}"
        )
    task_class = get_task(_volara1_task_type(config))
    return task_class.model_validate({**config, "task_type": _task_type_of(task_class)})


def _volara1_task_type(config: dict[str, Any]) -> str:
    """The task type a config names. volara 1.0.5 wrote its blockwise graph
    tasks with GraphMWS's ``"graph-mws"``; their fields tell them apart
    (`IterativeGraphMWS` had ``fit: overhang``, `GraphMWSExtractFragments`
    ``fit: shrink``)."""
    task_type = config["task_type"]
    if task_type != "graph-mws" or "fragments_db" not in config:
        return task_type
    if config.get("fit", "overhang") == "shrink":
        return "graph-mws-extract-frags"
    return "iterative-graph-mws"


def task_config(task: BlockwiseTask) -> dict[str, Any]:
    """A task as plain JSON-compatible data (with the ``task_type`` that
    loads it again, see `config_task_type`)."""
    return {
        **task.model_dump(mode="json"),
        "task_type": config_task_type(type(task)),
    }


def pipeline_config(pipeline: Pipeline | BlockwiseTask) -> dict[str, Any]:
    """A task or pipeline as ``{"tasks": [...], "edges": [[i, j], ...]}``,
    where an edge ``[i, j]`` runs task ``j`` after task ``i``."""
    from .pipeline import _as_pipeline

    pipeline = _as_pipeline(pipeline)
    tasks = pipeline.tasks
    index = {id(task): i for i, task in enumerate(tasks)}
    return {
        "tasks": [task_config(task) for task in tasks],
        "edges": [[index[id(u)], index[id(v)]] for u, v in pipeline.task_graph.edges],
    }


def load_pipeline(config: dict[str, Any]) -> Pipeline:
    """Build a pipeline from `pipeline_config` data. A single task config is
    accepted too."""
    import networkx as nx

    from .pipeline import Pipeline

    if "task_type" in config:
        return Pipeline(load_task(config))
    if not isinstance(config.get("tasks"), list):
        raise ValueError("a pipeline config is a mapping with a 'tasks' list")
    tasks = [load_task(task) for task in config["tasks"]]
    graph = nx.DiGraph()
    graph.add_nodes_from(tasks)
    for edge in config.get("edges", []):
        if (
            not isinstance(edge, list | tuple)
            or len(edge) != 2
            or not all(isinstance(i, int) and 0 <= i < len(tasks) for i in edge)
        ):
            raise ValueError(
                f"pipeline edge {edge!r}: expected [i, j] with task indices below "
                f"{len(tasks)}"
            )
        graph.add_edge(tasks[edge[0]], tasks[edge[1]])
    return Pipeline.from_graph(graph)


def read_config_file(path: Path | str) -> dict[str, Any]:
    """Parse a JSON (``.json``) or YAML (anything else) config file."""
    path = Path(path)
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        # safe_load refuses tags such as !!python/object: configs hold data,
        # never code
        raise ValueError(f"{path}: not a valid config file: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: a config file holds a mapping, got {type(data).__name__}"
        )
    return data


def dump_config(data: dict[str, Any], path: Path | str) -> None:
    """Write config data as JSON (``.json``) or YAML (anything else)."""
    path = Path(path)
    if path.suffix == ".json":
        path.write_text(json.dumps(data, indent=2))
    else:
        path.write_text(yaml.safe_dump(data, sort_keys=False))
