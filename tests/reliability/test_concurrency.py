"""Several workers writing nodes and edges into one graph at the same time,
over and over: no row is lost or doubled, and SQLite never answers
"database is locked" (WAL journal, busy timeout), nor PostgreSQL with an
error.

Each run has 48 blocks on 3 workers; each block rewrites its nodes and
edges 10 times, reading in between, so one run is about 1000 write
transactions racing each other; two runs per backend make every block's
graph written 20 times. Blocks get no retries: a single lock error fails the
run instead of being hidden by a successful retry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from funlib.geometry import Roi
from reliability_checks import count_duplicate_rows
from reliability_tasks import GraphWriter, block_graph

from conftest import write_array
from volara.datasets import Labels
from volara.dbs import DB, SQLite
from volara.graph_tables import read_edge_columns, read_node_columns

pytestmark = pytest.mark.slow

BLOCKS = (4, 4, 3)
RUNS = 2


def _writer(tmp_path: Path, db: DB) -> GraphWriter:
    shape = tuple(4 * b for b in BLOCKS)
    write_array(tmp_path / "grid.zarr" / "labels", np.zeros(shape, np.uint8))
    return GraphWriter(
        labels=Labels(store=tmp_path / "grid.zarr" / "labels"),
        db=db.model_copy(update={"edge_attrs": {"score": "float"}}),
        block_size=[4, 4, 4],
        num_workers=3,
        max_retries=0,
    )


def _expected_graph(writer: GraphWriter):
    nodes, us, vs, scores = {}, [], [], {"distance": [], "score": []}
    for index in range(int(np.prod(BLOCKS))):
        z, y, x = np.unravel_index(index, BLOCKS)
        roi = Roi((4 * z, 4 * y, 4 * x), (4, 4, 4))
        block_nodes, u, v, block_scores = block_graph(
            index, roi, writer.nodes_per_block
        )
        nodes.update(block_nodes)
        us.append(u), vs.append(v)
        for name in scores:
            scores[name].append(block_scores[name])
    return nodes, np.concatenate(us), np.concatenate(vs), scores


def _check_graph(writer: GraphWriter) -> None:
    nodes, u, v, scores = _expected_graph(writer)
    graph_db = writer.db.open("r")
    try:
        stored_nodes = read_node_columns(graph_db, ["position", "size"])
        stored_edges = read_edge_columns(graph_db, ["distance", "score"])
    finally:
        graph_db.close()
    ids = sorted(nodes)
    np.testing.assert_array_equal(stored_nodes["id"], ids)
    np.testing.assert_allclose(
        stored_nodes["position"], [nodes[i]["position"] for i in ids], rtol=1e-6
    )
    np.testing.assert_array_equal(stored_nodes["size"], [nodes[i]["size"] for i in ids])
    order = np.lexsort((stored_edges["v"], stored_edges["u"]))
    expected_order = np.lexsort((v, u))
    np.testing.assert_array_equal(stored_edges["u"][order], u[expected_order])
    np.testing.assert_array_equal(stored_edges["v"][order], v[expected_order])
    for name, values in scores.items():
        np.testing.assert_allclose(
            stored_edges[name][order], np.concatenate(values)[expected_order]
        )
    assert count_duplicate_rows(writer.db) == (0, 0)


def _run_repeatedly(tmp_path: Path, db: DB) -> None:
    writer = _writer(tmp_path, db)
    for run in range(RUNS):
        writer.drop(drop_outputs=True)  # a fresh graph each run
        state = writer.run_blockwise(progress=False)[writer.task_name]
        assert state.completed_count == state.total_block_count == 48, (run, state)
        assert state.failed_count == 0, (run, state.first_worker_error)
        logs = "".join(
            path.read_text()
            for path in (Path(writer.meta_dir).parent / writer.task_name).glob("*")
        )
        assert "locked" not in logs and "Error" not in logs, logs[-3000:]
        _check_graph(writer)


def test_workers_writing_one_sqlite_graph(tmp_path):
    _run_repeatedly(tmp_path, SQLite(path=tmp_path / "graph.sqlite"))


@pytest.mark.postgres
def test_workers_writing_one_postgresql_graph(tmp_path, postgres):
    _run_repeatedly(tmp_path, postgres)
