"""Hierarchical GraphMWS (``GraphMWS(block_size=...)``, three levels, two
workers) whose workers are killed (SIGKILL) mid-level, without retries: a
block of the first level's edge stage after it wrote its segment edges, on
the next run a block of the second level's watershed after it wrote its
segment nodes and table piece. Each killed block fails, what reads it is
orphaned, and the next run resumes (the last one is the plain task run
again, as a user would); the tables and segment graphs of the
resumed run equal those of an uninterrupted run, row for row."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from reliability_checks import count_duplicate_rows, run_killing
from reliability_tasks import PausingFragSegEdgeAgglom, PausingGraphMWSBlocks

from graph_levels_data import WEIGHTS, lattice_graph, read_graph, write_graph
from volara.blockwise import GraphMWS, Pipeline
from volara.blockwise.frag_seg_edge_agglom import FragSegEdgeAgglom
from volara.blockwise.graph_mws_blocks import GraphMWSBlocks
from volara.dbs import DB, SQLite
from volara.lut import LUT

pytestmark = pytest.mark.slow

SUMMARIES = ["aff", "aff__size", "aff__min", "aff__max"]
LEVELS = 3


def hierarchy(db: DB, roi, name: str, **options) -> GraphMWS:
    return GraphMWS(
        db=db,
        lut=LUT(path=name),
        roi=roi,
        weights=WEIGHTS,
        block_size=(12, 12, 12),
        **options,
    )


def with_pauses(
    task: GraphMWS, edges: Path | None = None, blocks: Path | None = None
) -> Pipeline:
    """``task``'s stages, the first level's `FragSegEdgeAgglom` and the
    second level's `GraphMWSBlocks` replaced by versions that pause after
    their writes at ``edges`` and ``blocks`` (under the names, and so with
    the block tracking, of the stages they replace)."""
    stages = task.stages()
    assert stages is not None
    replaced: dict = {}
    for stage in stages.tasks:
        fields = stage.model_dump(exclude={"task_type"})
        if isinstance(stage, FragSegEdgeAgglom) and stage.lut == task.lut.level(1):
            replaced[stage] = PausingFragSegEdgeAgglom(
                **fields, pause_after_writes=edges
            )
        elif isinstance(stage, GraphMWSBlocks) and stage.lut == task.lut.level(2):
            replaced[stage] = PausingGraphMWSBlocks(**fields, pause_after_writes=blocks)
    assert len(replaced) == 2
    return Pipeline.from_graph(nx.relabel_nodes(stages.task_graph, replaced))


def counts(states: dict) -> dict[str, tuple[int, int, int, int]]:
    return {
        name: (s.failed_count, s.orphaned_count, s.completed_count, s.skipped_count)
        for name, s in states.items()
    }


def outputs(task: GraphMWS, db: DB) -> dict[str, dict[str, np.ndarray]]:
    """The tables of ``task`` and its levels' segment graphs."""
    found: dict[str, dict[str, np.ndarray]] = {"lut": {"table": task.lut.load()}}
    for level in range(1, LEVELS + 1):
        found[f"lut level {level}"] = {"table": task.lut.level(level).load()}
        segments = db.sibling(f"{task.lut.name}_level{level}")
        assert count_duplicate_rows(segments) == (0, 0)
        nodes, edges = read_graph(segments, SUMMARIES)
        found[f"nodes level {level}"] = nodes
        found[f"edges level {level}"] = edges
    return found


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request, tmp_path) -> DB:
    if request.param == "sqlite":
        return SQLite(path=tmp_path / "fragments.sqlite")
    return request.getfixturevalue("postgres")


def test_killed_level_workers_resume_to_the_same_tables(tmp_path, backend):
    graph = lattice_graph(side=12, noise=0.2, seed=5, with_counts=True)
    db = write_graph(graph, backend)
    expected_task = hierarchy(db, graph.roi, "expected")
    expected_task.run_blockwise(multiprocessing=False, progress=False)
    expected = outputs(expected_task, db)

    task = hierarchy(
        db,
        graph.roi,
        "resumed",
        num_workers=2,
        # without retries a killed worker's block fails, for the next run to
        # resume; a block that is never killed fails after 60 s instead of
        # hanging the test
        max_retries=0,
        timeout=60,
    )
    assert len(task.level_block_sizes()) == LEVELS
    edges_pause, blocks_pause = tmp_path / "edges.pid", tmp_path / "blocks.pid"
    pipeline = with_pauses(task, edges=edges_pause)
    names = {type(stage): stage.task_name for stage in pipeline.tasks}
    edges_1 = names[PausingFragSegEdgeAgglom]
    blocks_2 = names[PausingGraphMWSBlocks]
    last = pipeline.tasks[-1].task_name
    # 1: the level-1 edge block fails; the level-2 blocks reading next to
    # it (at least one) and the last level are orphaned: no table yet
    first = counts(run_killing(pipeline, edges_pause))
    assert first[edges_1] == (1, 0, 63, 0)
    assert first[blocks_2][0] == 0 and first[blocks_2][1] >= 1
    assert first[last] == (0, 1, 0, 0)
    assert not task.lut.exists()
    # 2: resumed; a level-2 watershed block that had not run is killed
    second = counts(run_killing(with_pauses(task, blocks=blocks_pause), blocks_pause))
    assert second[edges_1] == (0, 0, 64, 63)
    assert second[blocks_2][0] == 1
    assert second[last] == (0, 1, 0, 0)
    # 3: the task itself run again resumes its stages to the end
    third = counts(task.run_blockwise(progress=False))
    assert third.keys() == first.keys()
    assert all(f == o == 0 for f, o, _, _ in third.values()), third
    assert third[edges_1] == (0, 0, 64, 64)
    assert third[blocks_2][2] == 8 and third[blocks_2][3] == 7
    assert third[last] == (0, 0, 1, 0)

    got = outputs(task, db)
    assert got.keys() == expected.keys()
    for what, columns in expected.items():
        assert got[what].keys() == columns.keys()
        for name, column in columns.items():
            np.testing.assert_array_equal(got[what][name], column, f"{what}.{name}")
    assert np.unique(got["lut"]["table"][1]).size > 5
    assert got["edges level 2"]["u"].size > 0
