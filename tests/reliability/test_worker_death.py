"""A worker killed (SIGKILL) in the middle of a block: daisy gives the block
to a new worker and the run completes with exactly the outputs of an
uninterrupted run, without a missing or duplicated graph row.

The kill lands at a known point: the first block to get there pauses and
names its process (see `reliability_tasks.pause_once`), and a thread of the
test kills that process, a real daisy worker of this test process."""

from __future__ import annotations

import pytest
from reliability_checks import (
    WorkerKiller,
    alive,
    assert_same_outputs,
    count_duplicate_rows,
    read_outputs,
    uninterrupted,  # noqa: F401  (a fixture)
)
from reliability_tasks import segmentation_pipeline, write_sample_data

from volara.dbs import SQLite

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
