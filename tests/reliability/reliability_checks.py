"""What the reliability tests look at: a segmentation run's outputs (zarr
arrays, graph rows, look-up table) compared with an uninterrupted run's, the
block tracking, and the processes of a run (found through ``/proc``)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate, Roi
from reliability_tasks import segmentation_pipeline, write_sample_data

import volara.logging
from conftest import write_array
from processes import alive, command_of, parent_of  # noqa: F401  (used by the tests)
from volara.datasets import Labels
from volara.dbs import DB
from volara.graph_tables import read_edge_columns, read_node_columns

EDGE_SCORES = ["distance", "adj_weight", "lr_weight"]


class Outputs(NamedTuple):
    """Everything a segmentation run writes, in a canonical order."""

    fragments: np.ndarray
    nodes: dict[str, np.ndarray]
    """``id``, ``position``, ``size``, sorted by id."""
    edges: dict[str, np.ndarray]
    """``u``, ``v`` and `EDGE_SCORES`, sorted by (u, v)."""
    lut: np.ndarray
    """Fragment ids and their segments, sorted by fragment id."""
    segments: np.ndarray


def read_graph(db: DB) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    graph_db = db.open("r")
    try:
        nodes = read_node_columns(graph_db, ["position", "size"])
        edges = read_edge_columns(graph_db, EDGE_SCORES)
    finally:
        graph_db.close()
    order = np.lexsort((edges["v"], edges["u"]))
    return nodes, {name: column[order] for name, column in edges.items()}


def read_outputs(workdir: Path, db: DB) -> Outputs:
    container = workdir / "sample.zarr"
    nodes, edges = read_graph(db)
    lut = np.load(workdir / "lut.npz")["fragment_segment_lut"]
    return Outputs(
        fragments=Labels(store=container / "fragments").array("r")[:],
        nodes=nodes,
        edges=edges,
        lut=lut[:, np.argsort(lut[0])],
        segments=Labels(store=container / "segments").array("r")[:],
    )


def assert_same_graph_rows(
    got: dict[str, np.ndarray],
    expected: dict[str, np.ndarray],
    what: str,
    float_rtol: float = 0.0,
) -> None:
    """Same rows, none missing, none twice, same values (NaN equals NaN;
    floats within ``float_rtol``)."""
    key = "id" if "id" in expected else "u"
    assert len(got[key]) == len(expected[key]), (
        f"{what}: {len(got[key])} rows, the uninterrupted run has {len(expected[key])}"
    )
    for name, column in expected.items():
        if name in ("id", "u", "v", "size"):
            np.testing.assert_array_equal(got[name], column, err_msg=f"{what}.{name}")
        else:
            np.testing.assert_allclose(
                got[name], column, rtol=float_rtol, atol=0, err_msg=f"{what}.{name}"
            )


def assert_same_outputs(got: Outputs, expected: Outputs, float_rtol=0.0) -> None:
    """``float_rtol``: PostgreSQL stores float attributes as 32-bit REAL, so
    its positions and scores match an SQLite run's to about 1e-7 only."""
    np.testing.assert_array_equal(got.fragments, expected.fragments, "fragments")
    assert_same_graph_rows(got.nodes, expected.nodes, "nodes", float_rtol)
    assert_same_graph_rows(got.edges, expected.edges, "edges", float_rtol)
    np.testing.assert_array_equal(got.lut, expected.lut, "look-up table")
    np.testing.assert_array_equal(got.segments, expected.segments, "segments")


def count_duplicate_rows(db: DB) -> tuple[int, int]:
    """Rows of the nodes and edges tables beyond one per id / (u, v)."""
    graph_db = db.open("r")
    try:
        u, v = graph_db.endpoint_names
        nodes = graph_db.nodes_table_name
        edges = graph_db.edges_table_name
        cursor = graph_db.cur
        cursor.execute(f"SELECT COUNT(*) - COUNT(DISTINCT id) FROM {nodes}")
        extra_nodes = cursor.fetchone()[0]
        cursor.execute(
            f"SELECT COUNT(*) - (SELECT COUNT(*) FROM "
            f"(SELECT DISTINCT {u}, {v} FROM {edges}) AS pairs) FROM {edges}"
        )
        extra_edges = cursor.fetchone()[0]
    finally:
        graph_db.close()
    return extra_nodes, extra_edges


def write_small_volume(workdir: Path) -> Labels:
    """An 8 x 8 x 8 uint16 volume (voxel size 1, values 1 to 7): 2 x 2 x 2
    blocks of 4."""
    data = (np.arange(8**3, dtype=np.uint16).reshape(8, 8, 8) % 7) + 1
    write_array(workdir / "in.zarr" / "labels", data)
    return Labels(store=workdir / "in.zarr" / "labels")


# --------------------------------------------------------- the reference run


_uninterrupted_outputs: list[Outputs] = []


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Outputs:
    """The outputs of the segmentation pipeline run once, in this process,
    without interruption (SQLite). Computed once per session, although each
    test module that imports this fixture has its own copy of it."""
    if not _uninterrupted_outputs:
        _uninterrupted_outputs.append(_run_uninterrupted(tmp_path_factory))
    return _uninterrupted_outputs[0]


def _run_uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Outputs:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    before = volara.logging._log_basedir
    volara.logging.set_log_basedir(workdir / "volara_logs")
    try:
        write_sample_data(workdir)
        pipeline = segmentation_pipeline(workdir, num_workers=1)
        states = pipeline.run_blockwise(multiprocessing=False, progress=False)
        assert all(s.completed_count == s.total_block_count for s in states.values())
        return read_outputs(workdir, pipeline.tasks[0].db)
    finally:
        volara.logging._log_basedir = before


# ------------------------------------------------------------ block tracking


def done_blocks(task) -> np.ndarray:
    """The task's block tracking: 1 for every block recorded as done."""
    try:
        return zarr.open_array(str(task.block_ds / "done"), mode="r")[:]
    except (FileNotFoundError, KeyError, ValueError):  # not created yet
        return np.zeros(0, dtype=np.uint8)


def done_write_rois(task) -> list[Roi]:
    """Write regions of the blocks recorded as done."""
    done = done_blocks(task)
    write_roi, write_size = task.write_roi, task.write_size
    return [
        Roi(
            write_roi.offset + write_size * Coordinate(int(i) for i in index),
            write_size,
        ).intersect(write_roi)
        for index in zip(*np.nonzero(done), strict=True)
    ]


# ------------------------------------------------------------------ processes


def processes_in_group(group: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def is_daisy_worker_of_this_process(pid: int) -> bool:
    """A worker process of this process's runs: a daisy worker subprocess, or
    a worker forked by this process's prefork host (`volara.prefork`)."""
    parent = parent_of(pid)
    if parent == os.getpid():
        return "daisy._subprocess_worker" in command_of(pid)
    return (
        parent is not None
        and parent_of(parent) == os.getpid()
        and "volara.prefork" in command_of(parent)
    )


class WorkerKiller(threading.Thread):
    """Waits for each pause file, then kills (SIGKILL) the paused worker
    process whose id the file holds, after checking that it is a daisy
    worker of this process."""

    def __init__(self, pause_files: list[Path]):
        super().__init__(daemon=True)
        self.pending = list(pause_files)
        self.killed: dict[Path, int] = {}
        self.problems: list[str] = []
        self._run_over = threading.Event()

    def run(self) -> None:
        while self.pending and not self._run_over.is_set():
            for pause_file in [p for p in self.pending if p.exists()]:
                self.pending.remove(pause_file)
                self._kill(pause_file)
            time.sleep(0.02)
        if self.pending:
            self.problems.append(f"no block ever paused at {self.pending}")

    def finish(self) -> None:
        """Stop waiting (the run is over) and wait for the thread."""
        self._run_over.set()
        self.join()

    def _kill(self, pause_file: Path) -> None:
        pid = int(pause_file.read_text())
        if not is_daisy_worker_of_this_process(pid):
            self.problems.append(
                f"{pause_file.name}: process {pid} ({command_of(pid)!r}, parent "
                f"{parent_of(pid)}) is not a daisy worker of this process"
            )
            return
        os.kill(pid, signal.SIGKILL)
        self.killed[pause_file] = pid


def run_killing(pipeline, pause_file: Path) -> dict:
    """Run ``pipeline``, killing (SIGKILL) the worker that pauses at
    ``pause_file``; the kill must happen. Returns the run's states."""
    killer = WorkerKiller([pause_file])
    killer.start()
    try:
        states = pipeline.run_blockwise(progress=False)
    finally:
        killer.finish()
    assert not killer.problems, killer.problems
    assert list(killer.killed) == [pause_file]
    assert not alive(killer.killed[pause_file])
    return states
