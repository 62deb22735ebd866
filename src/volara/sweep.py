"""Parameter sweeps: run a pipeline for every combination of some of its
fields' values and score each result against a ground truth.

    volara-cli sweep pipeline.yaml --gt sample.zarr/labels \\
        --vary graph-mws.weights.adj_weight.1=-0.3,-0.4,-0.5 --out sweep

A varied field is named by its task's ``task_type`` and a dotted path into
the task's config (dict keys and list indices). The tasks that depend on no
varied task run once, as the config says (a finished run of the config is
reused). The varied tasks and everything downstream of them run once per
combination, each writing its outputs (arrays, look-up tables, SQLite
graphs) under ``DIR/combination-<row>/`` with its own block tracking, so
nothing of the original run is overwritten. ``DIR/sweep.csv`` gets one row
per combination (the varied values, then ``voi_split``, ``voi_merge``,
``arand`` and the run's ``seconds``), and ``DIR/sweep.png`` plots VOI split
against merge, each point labelled with its values.
"""

from __future__ import annotations

import copy
import csv
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

from .blockwise.blockwise import BlockwiseTask
from .blockwise.registry import dump_config, load_pipeline, load_task
from .datasets import Labels
from .dbs import PostgreSQL
from .evaluate import Evaluation, evaluate, open_labels
from .logging import get_log_basedir, set_log_basedir
from .stores import location_key

SCORES = ("voi_split", "voi_merge", "arand", "seconds")


@dataclass(frozen=True)
class Variation:
    """Values for one field: ``--vary TASK.FIELD=V1,V2,...``."""

    task_type: str
    path: tuple[str | int, ...]
    values: tuple[Any, ...]

    @property
    def label(self) -> str:
        """The field as the user named it: the CSV column's name."""
        return ".".join([self.task_type, *map(str, self.path)])


def parse_variation(text: str) -> Variation:
    """``"graph-mws.weights.adj_weight.1=-0.3,-0.4"``: values are read as
    YAML scalars (``-0.3`` a number, ``true`` a boolean, ``abc`` a
    string)."""
    field, equals, values = text.partition("=")
    parts = field.split(".")
    if not equals or len(parts) < 2 or not all(parts) or not values.strip():
        raise ValueError(
            f"--vary {text!r}: expected TASK.FIELD=V1,V2,... with TASK a task_type "
            "of the config and FIELD a dotted path into its fields, e.g. "
            "graph-mws.weights.adj_weight.1=-0.3,-0.4"
        )
    path = tuple(int(p) if p.lstrip("-").isdigit() else p for p in parts[1:])
    return Variation(
        parts[0], path, tuple(yaml.safe_load(v) for v in values.split(","))
    )


@dataclass
class SweepPlan:
    """What a sweep runs, checked before anything runs."""

    shared: dict[str, Any]
    """The pipeline config of the tasks no varied task feeds (may be
    empty)."""
    combinations: list[tuple[dict[str, Any], dict[str, Any], Path]]
    """Per combination: the varied values by label, the pipeline config of
    the varied tasks and their downstream tasks (outputs moved into the
    combination's directory), and the segmentation to score."""


def plan_sweep(
    config: dict[str, Any],
    variations: list[Variation],
    out_dir: Path,
    segmentation: Path | str | None = None,
) -> SweepPlan:
    """Check the variations against ``config`` and build every
    combination's config; raises `ValueError` naming the ``--vary`` (or the
    field) that is wrong."""
    configs = list(config.get("tasks", [config] if "task_type" in config else []))
    tasks = [load_task(task) for task in configs]
    graph = nx.DiGraph()
    graph.add_nodes_from(range(len(tasks)))
    graph.add_edges_from(tuple(edge) for edge in config.get("edges", []))
    varied = {variation: _task_index(variation, configs) for variation in variations}
    for variation, index in varied.items():
        _check_path(variation, configs[index])
    affected = set(varied.values())
    for index in list(affected):
        affected |= nx.descendants(graph, index)
    order = [i for i in nx.topological_sort(graph) if i in affected]
    moved_outputs = {
        location_key(path) for i in order for path in tasks[i].output_paths
    }
    _check_databases([tasks[i] for i in order], moved_outputs)
    target = _segmentation_to_score([tasks[i] for i in order], segmentation)
    shared = [i for i in range(len(tasks)) if i not in affected]
    combinations = []
    names = [variation.label for variation in variations]
    for row, values in enumerate(
        itertools.product(*(v.values for v in variations)), start=1
    ):
        directory = out_dir / f"combination-{row}"
        moved = {path: _moved(path, directory) for path in moved_outputs}
        task_configs = {i: copy.deepcopy(configs[i]) for i in order}
        for variation, value in zip(variations, values, strict=True):
            _set(task_configs[varied[variation]], variation.path, value)
        for i in order:
            task_configs[i] = _replace_paths(task_configs[i], moved)
            try:
                load_task(task_configs[i])
            except ValueError as e:
                given = ", ".join(
                    f"{name}={value}" for name, value in zip(names, values, strict=True)
                )
                raise ValueError(
                    f"--vary {given}: {configs[i]['task_type']} refuses it: {e}"
                ) from e
        combinations.append(
            (
                dict(zip(names, values, strict=True)),
                _subpipeline(task_configs, graph, order),
                Path(moved[str(target.absolute())]),
            )
        )
    return SweepPlan(
        shared=_subpipeline({i: configs[i] for i in shared}, graph, shared),
        combinations=combinations,
    )


def run_sweep(
    config: dict[str, Any],
    ground_truth: Path | str,
    variations: list[Variation],
    out_dir: Path,
    segmentation: Path | str | None = None,
    mask: Path | str | None = None,
    multiprocessing: bool = True,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every combination, score it, write ``sweep.csv`` (a row as soon
    as its combination is scored) and ``sweep.png``; returns the rows."""
    open_labels(ground_truth, "--gt")
    if mask is not None:
        open_labels(mask, "--mask")
    plan = plan_sweep(config, variations, out_dir, segmentation)
    out_dir.mkdir(parents=True, exist_ok=True)
    if plan.shared["tasks"]:
        _run(plan.shared, multiprocessing)
    rows: list[dict[str, Any]] = []
    log_dir = get_log_basedir()
    for values, pipeline, target in plan.combinations:
        directory = out_dir / f"combination-{len(rows) + 1}"
        directory.mkdir(exist_ok=True)
        dump_config(pipeline, directory / "pipeline.yaml")
        set_log_basedir(directory / "volara_logs")
        try:
            start = time.perf_counter()
            _run(pipeline, multiprocessing)
            seconds = time.perf_counter() - start
        finally:
            set_log_basedir(log_dir)
        scores = evaluate(target, ground_truth, mask=mask)
        rows.append({**values, **_row_scores(scores), "seconds": seconds})
        write_csv(rows, out_dir / "sweep.csv")
        if report is not None:
            report(rows[-1])
    plot_sweep(rows, [v.label for v in variations], out_dir / "sweep.png")
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_sweep(rows: list[dict[str, Any]], labels: list[str], path: Path) -> None:
    """VOI split against merge, one point per combination, labelled with its
    values in the order the title names the fields."""
    from .figures import pyplot

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 5))
    axes.plot([r["voi_split"] for r in rows], [r["voi_merge"] for r in rows], "o")
    for row in rows:
        note = axes.annotate(
            ", ".join(str(row[label]) for label in labels),
            (row["voi_split"], row["voi_merge"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
        # labels may reach past the axes; they must not shrink them
        note.set_in_layout(False)
    axes.margins(0.15)
    axes.set_xlabel("VOI split (bits)")
    axes.set_ylabel("VOI merge (bits)")
    axes.set_title("points labelled " + ", ".join(labels), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ------------------------------------------------------------------ helpers


def _task_index(variation: Variation, configs: list[dict[str, Any]]) -> int:
    matches = [
        i for i, c in enumerate(configs) if c["task_type"] == variation.task_type
    ]
    if len(matches) != 1:
        known = ", ".join(sorted({c["task_type"] for c in configs}))
        what = "no task" if not matches else f"{len(matches)} tasks"
        raise ValueError(
            f"--vary {variation.label}: the config has {what} of task_type "
            f"{variation.task_type!r} (its task types: {known}); name a task "
            "type that appears once"
        )
    return matches[0]


def _check_path(variation: Variation, config: dict[str, Any]) -> None:
    node: Any = config
    for depth, part in enumerate(variation.path):
        where = ".".join([variation.task_type, *map(str, variation.path[: depth + 1])])
        if isinstance(node, dict):
            if part not in node:
                raise ValueError(
                    f"--vary {variation.label}: {where} names no field; there are "
                    f"{', '.join(map(str, node))}"
                )
        elif isinstance(node, list):
            if not isinstance(part, int) or not -len(node) <= part < len(node):
                raise ValueError(
                    f"--vary {variation.label}: {where}: give an index below "
                    f"{len(node)} (the field is a list of {len(node)})"
                )
        else:
            raise ValueError(
                f"--vary {variation.label}: {where}: the field before it is a "
                f"value ({node!r}), not a list or mapping"
            )
        node = node[part]


def _set(config: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    node: Any = config
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _moved(path: str, directory: Path) -> str:
    """Where an output goes in a combination's directory: the same path
    below it (relative to the working directory where possible)."""
    absolute = Path(path)
    try:
        relative = absolute.relative_to(Path.cwd())
    except ValueError:
        relative = absolute.relative_to(absolute.anchor)
    return str((directory / relative).absolute())


def _replace_paths(value: Any, moved: dict[str, str]) -> Any:
    """``value`` with every string naming a moved output replaced."""
    if isinstance(value, dict):
        return {key: _replace_paths(item, moved) for key, item in value.items()}
    if isinstance(value, list):
        return [_replace_paths(item, moved) for item in value]
    if isinstance(value, str) and value:
        absolute = str(Path(value).absolute())
        # a LUT's path may leave out the .npz its output path has
        return moved.get(absolute) or moved.get(f"{absolute}.npz") or value
    return value


def _check_databases(tasks: list[BlockwiseTask], moved_outputs: set[str]) -> None:
    """Each combination needs its own graph: refuse graphs it would share."""
    from .blockwise import AffAgglom, DistanceAgglom, ExtractFrags, SeededExtractFrags

    for task in tasks:
        db = getattr(task, "db", None)
        if not isinstance(
            task, AffAgglom | DistanceAgglom | ExtractFrags | SeededExtractFrags
        ):
            continue
        if isinstance(db, PostgreSQL):
            raise ValueError(
                f"sweep: {task.task_type} writes to the PostgreSQL database "
                f"{db.name!r}, which every combination would share. Sweep with a "
                "SQLite graph (each combination writes its own file)."
            )
        path = getattr(db, "path", None)
        if path is not None and location_key(path) not in moved_outputs:
            raise ValueError(
                f"sweep: {task.task_type} adds to the graph {path!s}, which a task "
                "that is not varied creates, so every combination would write into "
                "it. Vary a field of the task that creates the graph as well, or of "
                "a task after this one."
            )


def _segmentation_to_score(
    tasks: list[BlockwiseTask], segmentation: Path | str | None
) -> Path:
    labels = [
        Path(dataset.store)
        for task in tasks
        for dataset in task.output_datasets
        if isinstance(dataset, Labels)
    ]
    if segmentation is None:
        if not labels:
            raise ValueError(
                "sweep: no varied task (or task after one) writes a label array to "
                "score; vary a field of a task before the segmentation"
            )
        return labels[-1]
    if Path(segmentation).absolute() not in [p.absolute() for p in labels]:
        raise ValueError(
            f"--segmentation {segmentation!s} is not written by a varied task or a "
            f"task after one (those write {', '.join(map(str, labels)) or 'none'})"
        )
    return Path(segmentation)


def _subpipeline(
    task_configs: dict[int, dict[str, Any]], graph: nx.DiGraph, indices: list[int]
) -> dict[str, Any]:
    position = {index: n for n, index in enumerate(indices)}
    return {
        "tasks": [task_configs[i] for i in indices],
        "edges": [[position[u], position[v]] for u, v in graph.subgraph(indices).edges],
    }


def _run(pipeline_config: dict[str, Any], multiprocessing: bool) -> None:
    states = load_pipeline(pipeline_config).run_blockwise(
        multiprocessing=multiprocessing, progress=False
    )
    incomplete = [
        f"{name}: {state.failed_count} failed, {state.orphaned_count} orphaned"
        for name, state in states.items()
        if not state.finished
    ]
    if incomplete:
        raise RuntimeError("sweep: blocks did not finish: " + "; ".join(incomplete))


def _row_scores(scores: Evaluation) -> dict[str, float]:
    return {
        "voi_split": scores.voi_split,
        "voi_merge": scores.voi_merge,
        "arand": scores.arand,
    }
