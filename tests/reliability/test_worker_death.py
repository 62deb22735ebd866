"""A worker killed (SIGKILL) in the middle of a block: daisy gives the block
to a new worker and the run completes with exactly the outputs of an
uninterrupted run, without a missing or duplicated graph row.

The kill lands at a known point: the first block to get there pauses and
names its process (see `reliability_tasks.pause_once`), and a thread of the
test kills that process, a real daisy worker of this test process."""

from __future__ import annotations

import numpy as np
import pytest
from reliability_checks import (
    WorkerKiller,
    alive,
    assert_same_graph_rows,
    assert_same_outputs,
    count_duplicate_rows,
    read_graph,
    read_outputs,
    run_killing,
    uninterrupted,  # noqa: F401  (a fixture)
)
from reliability_tasks import (
    PausingExtractFrags,
    PausingRelabel,
    segmentation_pipeline,
    write_sample_data,
)

from test_s3 import (
    SHAPE,
    _copy_affinities_to_s3,
    _graph_db,
    _segmentation_pipeline,
)
from volara.blockwise import Pipeline
from volara.datasets import Affs, Labels
from volara.dbs import SQLite
from volara.logging import set_log_basedir
from volara.lut import LUT
from volara.sample_data import generate_sample_data

pytestmark = pytest.mark.slow


def _run_with_kills(tmp_path, db, extract_frags_pauses: list[str]):
    """Run the pipeline, killing each worker that pauses in ExtractFrags
    (at each of ``extract_frags_pauses``) and the one that pauses in
    AffAgglom after writing its edges."""
    write_sample_data(tmp_path)
    pause_files = {
        name: tmp_path / f"extract-frags-{name}.pid" for name in extract_frags_pauses
    }
    aff_agglom_pause = tmp_path / "aff-agglom.pid"
    pipeline = segmentation_pipeline(
        tmp_path,
        db=db,
        # a block that is never killed fails after this long instead of
        # hanging the test
        timeout=60,
        extract_frags_pauses=pause_files,
        aff_agglom_pause=aff_agglom_pause,
    )
    extract_frags, aff_agglom, graph_mws, relabel = pipeline.tasks
    killer = WorkerKiller([*pause_files.values(), aff_agglom_pause])
    killer.start()
    try:
        states = (extract_frags + aff_agglom).run_blockwise(progress=False)
    finally:
        killer.finish()
    _check_completed([extract_frags, aff_agglom], states, kills=[len(pause_files), 1])
    assert not killer.problems, killer.problems
    assert len(killer.killed) == len(pause_files) + 1
    assert not any(alive(pid) for pid in killer.killed.values())
    # the global tasks have no worker to kill: run in this process, they
    # cost no worker start-up
    states = (graph_mws + relabel).run_blockwise(multiprocessing=False, progress=False)
    _check_completed([graph_mws, relabel], states, kills=[0, 0])
    assert count_duplicate_rows(extract_frags.db) == (0, 0)
    return read_outputs(tmp_path, extract_frags.db)


def _check_completed(tasks, states, kills: list[int]) -> None:
    for task, killed_workers in zip(tasks, kills, strict=True):
        state = states[task.task_name]
        assert state.completed_count == state.total_block_count, state
        assert state.failed_count == 0 and state.orphaned_count == 0, state
        assert not state.abandoned
        # each killed worker was noticed and replaced
        assert state.worker_failure_count == killed_workers, task.task_name
        assert state.worker_restart_count >= killed_workers, task.task_name


def test_killed_workers_sqlite(tmp_path, uninterrupted):  # noqa: F811
    # one ExtractFrags worker dies after writing fragments but before their
    # nodes, another after writing both; an AffAgglom worker after its edges
    outputs = _run_with_kills(
        tmp_path,
        SQLite(path=tmp_path / "graph.sqlite"),
        ["pause_between_writes", "pause_after_writes"],
    )
    assert_same_outputs(outputs, uninterrupted)


@pytest.mark.postgres
def test_killed_workers_postgresql(tmp_path, uninterrupted, postgres):  # noqa: F811
    # PostgreSQL writes nodes with COPY, which fails on a duplicate id: the
    # retried block must replace what the killed one wrote
    outputs = _run_with_kills(tmp_path, postgres, ["pause_after_writes"])
    assert_same_outputs(outputs, uninterrupted, float_rtol=1e-5)


# ---------------------------------------------------------------------- S3


def _s3_run(
    affs: Affs, fragments: Labels, segments: Labels, lut: LUT, db: SQLite, pauses
) -> Pipeline:
    """The S3 test's pipeline (`test_s3._segmentation_pipeline`, two
    workers per blockwise task) with an ExtractFrags that pauses between its
    writes and a Relabel that pauses after its writes, at ``pauses``."""
    extract_frags, aff_agglom, graph_mws, relabel = _segmentation_pipeline(
        affs, fragments, segments, lut, db
    ).tasks
    # a block that is never killed fails after this long instead of hanging;
    # without retries the killed worker's block fails, for a later run to
    # resume
    common = {"timeout": 60, "max_retries": 0}
    return (
        PausingExtractFrags(
            **{**extract_frags.model_dump(exclude={"task_type"}), **common},
            pause_between_writes=pauses["extract-frags"],
        )
        + aff_agglom
        + graph_mws
        + PausingRelabel(
            **{**relabel.model_dump(exclude={"task_type"}), **common},
            pause_after_writes=pauses["relabel"],
        )
    )


def _counts(states: dict) -> list[tuple[int, int, int, int]]:
    """(failed, orphaned, completed, skipped) blocks of each task."""
    return [
        (s.failed_count, s.orphaned_count, s.completed_count, s.skipped_count)
        for s in states.values()
    ]


def test_killed_workers_writing_to_s3_then_resumed(seaweedfs, tmp_path):
    """Workers killed mid-block while writing to S3 (an ExtractFrags worker
    after its fragments reached S3 but before its nodes reached the graph, a
    Relabel worker after its segments reached S3), the run resumed: the
    fragments, segments and look-up table on S3 and the graph equal those of
    an uninterrupted (local) run, exactly."""
    generate_sample_data(tmp_path / "sample.zarr", shape=SHAPE, num_cells=20, seed=3)
    local_affs = Affs(store=tmp_path / "sample.zarr" / "affinities")
    expected_fragments = Labels(store=tmp_path / "sample.zarr" / "fragments")
    expected_segments = Labels(store=tmp_path / "sample.zarr" / "segments")
    expected_lut = LUT(path=tmp_path / "lut.npz")
    expected_db = _graph_db(tmp_path / "local.sqlite")
    set_log_basedir(tmp_path / "local_logs")
    states = _segmentation_pipeline(
        local_affs, expected_fragments, expected_segments, expected_lut, expected_db
    ).run_blockwise(multiprocessing=False, progress=False)
    assert all(s.completed_count == s.total_block_count for s in states.values())

    container, options = _copy_affinities_to_s3(seaweedfs, local_affs)
    fragments = Labels(store=f"{container}/fragments", s3_kwargs=options)
    segments = Labels(store=f"{container}/segments", s3_kwargs=options)
    lut = LUT(path=f"{container}/lut", s3_kwargs=options)
    db = _graph_db(tmp_path / "remote.sqlite")
    pauses = {name: tmp_path / f"{name}.pid" for name in ("extract-frags", "relabel")}
    pipeline = _s3_run(
        Affs(store=f"{container}/affinities", s3_kwargs=options),
        fragments,
        segments,
        lut,
        db,
        pauses,
    )
    set_log_basedir(tmp_path / "s3_logs")
    # ExtractFrags' block fails where its worker is killed (no retries), so
    # the graph tasks and Relabel are orphaned: the second run resumes
    # ExtractFrags and runs the rest, until Relabel's worker is killed; the
    # third run resumes Relabel only
    first = run_killing(pipeline, pauses["extract-frags"])
    assert _counts(first) == [(1, 0, 7, 0), (0, 8, 0, 0), (0, 1, 0, 0), (0, 8, 0, 0)]
    second = run_killing(pipeline, pauses["relabel"])
    assert _counts(second) == [(0, 0, 8, 7), (0, 0, 8, 0), (0, 0, 1, 0), (1, 0, 7, 0)]
    third = pipeline.run_blockwise(progress=False)
    assert _counts(third) == [(0, 0, 8, 8), (0, 0, 8, 8), (0, 0, 1, 1), (0, 0, 8, 7)]
    assert count_duplicate_rows(db) == (0, 0)

    nodes, edges = read_graph(db)
    expected_nodes, expected_edges = read_graph(expected_db)
    assert_same_graph_rows(nodes, expected_nodes, "nodes")
    assert_same_graph_rows(edges, expected_edges, "edges")
    for got, expected in [
        (fragments, expected_fragments),
        (segments, expected_segments),
    ]:
        array, expected_array = got.array("r"), expected.array("r")
        assert array.roi == expected_array.roi
        np.testing.assert_array_equal(
            array[array.roi], expected_array[expected_array.roi], got.name
        )
    np.testing.assert_array_equal(lut.load(), expected_lut.load(), "look-up table")
    assert len(np.unique(segments.array("r")[:])) > 10
