"""GraphMWS on small hand-made graphs, and on a large one for speed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from volara.blockwise.graph_mws import GraphMWS
from volara.dbs import DB, SQLite
from volara.kernels.graph_mws import (
    mutex_watershed,
    size_weighted_means,
    weighted_edges,
)
from volara.lut import LUT

NAN = float("nan")
# Weights (1, -0.5) on both attributes: an affinity above 0.5 merges.
WEIGHTS = {"aff": (1.0, -0.5), "lr": (1.0, -0.5)}
# (u, v, aff, lr). With aff alone, in order of |weight|: 1-4 (-0.5) keeps 1
# and 4 apart; 1-2 (+0.4) and 2-3 (+0.3) merge {1, 2, 3}; 5-6 (+0.3) merges;
# 3-4 (+0.25) is refused by the 1-4 mutex; 4-5 (+0.2) gives {4, 5, 6}.
EDGES = [
    (1, 2, 0.9, NAN),
    (2, 3, 0.8, NAN),
    (1, 4, 0.0, NAN),
    (3, 4, 0.75, NAN),
    (4, 5, 0.7, NAN),
    (5, 6, 0.8, 0.3),
    (4, 6, NAN, 0.35),
]
SIZES = {1: 10, 2: 30, 3: 60, 4: 5, 5: 5, 6: 10, 7: 1}
INTENSITY = {1: 1.0, 2: 2.0, 3: 3.0, 4: 0.0, 5: 4.0, 6: 1.0, 7: 9.0}
ROI = ((0, 0, 0), (10, 10, 80))  # every node: node i sits at z=0, y=0, x=10*i


def write_graph(db: DB) -> None:
    db.init()
    graph = db.open("r+")
    graph.write_nodes(
        {
            i: {
                "position": (0.0, 0.0, 10.0 * i),
                "size": SIZES[i],
                "filtered": False,
                "intensity": INTENSITY[i],
            }
            for i in SIZES
        }
    )
    edges = {
        (u, v): {
            "aff": None if np.isnan(aff) else aff,
            "lr": None if np.isnan(lr) else lr,
        }
        for u, v, aff, lr in EDGES
    }
    positions = {i: {"position": (0.0, 0.0, 10.0 * i)} for i in SIZES}
    graph.write_edges(positions, edges, attributes=["aff", "lr"])
    graph.close()


def graph_db(tmp_path: Path, name: str = "graph") -> SQLite:
    return SQLite(
        path=tmp_path / f"{name}.db",
        node_attrs={"intensity": "float"},
        edge_attrs={"aff": "float", "lr": "float"},
    )


def make_task(tmp_path: Path, db: DB, **kwargs) -> GraphMWS:
    options = dict(db=db, lut=LUT(path=tmp_path / "lut"), weights=WEIGHTS, roi=ROI)
    options.update(kwargs)
    return GraphMWS(**options)


def run(task: GraphMWS, multiprocessing: bool = False) -> dict[int, int]:
    states = task.run_blockwise(multiprocessing=multiprocessing)
    assert states[task.task_name].completed_count == 1
    table = task.lut.load()
    assert table is not None and table.dtype == np.uint64
    return dict(zip(table[0].tolist(), table[1].tolist(), strict=True))


def test_merges_splits_and_mutex(tmp_path):
    db = graph_db(tmp_path)
    write_graph(db)
    lut = run(
        make_task(tmp_path, db, weights={"aff": (1.0, -0.5)}), multiprocessing=True
    )
    # segments named by their smallest fragment; isolated 7 maps to itself
    assert lut == {1: 1, 2: 1, 3: 1, 4: 4, 5: 4, 6: 4, 7: 7}


def test_edge_per_attr_or_summed(tmp_path):
    db = graph_db(tmp_path)
    write_graph(db)
    # One edge per attribute: 5-6 merges at +0.3 before its lr edge (-0.2)
    # and 4-6 (-0.15) come up.
    per_attr = run(make_task(tmp_path, db, lut=LUT(path=tmp_path / "a")))
    assert per_attr == {1: 1, 2: 1, 3: 1, 4: 4, 5: 4, 6: 4, 7: 7}
    # Summed: 5-6 weighs +0.1, after the 4-6 mutex (-0.15): 6 stays apart.
    summed = run(
        make_task(tmp_path, db, lut=LUT(path=tmp_path / "b"), edge_per_attr=False)
    )
    assert summed == {1: 1, 2: 1, 3: 1, 4: 4, 5: 4, 6: 6, 7: 7}


def test_starting_lut_forces_merges_over_a_mutex(tmp_path):
    db = graph_db(tmp_path)
    write_graph(db)
    start = LUT(path=tmp_path / "start")
    start.save(np.array([[3, 4], [100, 100]], dtype=np.uint64))
    lut = run(make_task(tmp_path, db, weights={"aff": (1.0, -0.5)}, starting_lut=start))
    # 3-4 is merged first; the 1-4 mutex then keeps {1, 2} from joining them
    assert lut == {1: 1, 2: 1, 3: 3, 4: 3, 5: 3, 6: 3, 7: 7}


def test_bounded_read(tmp_path):
    db = graph_db(tmp_path)
    write_graph(db)
    roi = ((0, 0, 0), (10, 10, 50))  # nodes 1..4 only
    bounded = run(make_task(tmp_path, db, lut=LUT(path=tmp_path / "a"), roi=roi))
    assert bounded == {1: 1, 2: 1, 3: 1, 4: 4}
    unbounded = run(
        make_task(
            tmp_path, db, lut=LUT(path=tmp_path / "b"), roi=roi, bounded_read=False
        )
    )
    assert unbounded == {1: 1, 2: 1, 3: 1, 4: 4, 5: 4, 6: 4, 7: 7}


def test_mean_attrs_into_out_db(tmp_path):
    db = graph_db(tmp_path)
    write_graph(db)
    out_db = SQLite(
        path=tmp_path / "segments.db", node_attrs={"mean_intensity": "float"}
    )
    task = make_task(
        tmp_path,
        db,
        weights={"aff": (1.0, -0.5)},
        mean_attrs={"intensity": "mean_intensity"},
        out_db=out_db,
    )
    run(task)
    segments = {n["id"]: n for n in out_db.open("r").read_nodes()}
    assert sorted(segments) == [1, 4, 7]
    assert segments[1]["size"] == 100
    assert segments[1]["mean_intensity"] == pytest.approx((10 + 60 + 180) / 100)
    assert segments[1]["position"] == pytest.approx((0, 0, (10 + 60 + 180) / 100 * 10))
    assert segments[4]["mean_intensity"] == pytest.approx((0 + 20 + 10) / 20)
    assert segments[7]["mean_intensity"] == pytest.approx(9.0)
    task.drop_artifacts()
    assert not task.lut.exists() and not out_db.exists()


def test_rerun_after_drop_gives_the_same_table(tmp_path):
    db = graph_db(tmp_path)
    write_graph(db)
    task = make_task(tmp_path, db)
    first = run(task)
    assert task.run_blockwise(multiprocessing=False)[task.task_name].skipped_count == 1
    task.drop(drop_outputs=False)
    assert run(task) == first


@pytest.mark.postgres
def test_postgres_gives_the_same_lut(tmp_path, postgres):
    lite = graph_db(tmp_path)
    write_graph(lite)
    pg = postgres.model_copy(
        update={
            "node_attrs": {"intensity": "float"},
            "edge_attrs": {"aff": "float", "lr": "float"},
        }
    )
    write_graph(pg)
    for edge_per_attr in (True, False):
        for bounded_read in (True, False):
            options = dict(edge_per_attr=edge_per_attr, bounded_read=bounded_read)
            a = run(make_task(tmp_path, lite, lut=LUT(path=tmp_path / "a"), **options))
            b = run(make_task(tmp_path, pg, lut=LUT(path=tmp_path / "b"), **options))
            assert a == b
            LUT(path=tmp_path / "a").drop()
            LUT(path=tmp_path / "b").drop()
            for name in ("a", "b"):
                make_task(tmp_path, lite, lut=LUT(path=tmp_path / name)).drop()


def test_weight_missing_from_db_is_refused_before_running(tmp_path):
    db = graph_db(tmp_path)
    write_graph(db)
    task = make_task(tmp_path, db, weights={"adj_weight": (1.0, -0.5)})
    with pytest.raises(
        ValueError, match=r"'adj_weight' is not an edge attribute.*edge_attrs"
    ):
        task.run_blockwise(multiprocessing=False)
    assert not task.lut.exists() and not task.block_ds.exists()


def test_construction_errors(tmp_path):
    db = graph_db(tmp_path)
    with pytest.raises(ValidationError, match="mean_attrs is set but out_db is None"):
        make_task(tmp_path, db, mean_attrs={"intensity": "mean_intensity"})
    with pytest.raises(ValidationError, match="roi"):
        GraphMWS(db=db, lut=LUT(path=tmp_path / "lut"), weights=WEIGHTS)
    with pytest.raises(ValidationError, match="not a valid identifier"):
        make_task(tmp_path, db, weights={"aff; DROP TABLE nodes": (1.0, 0.0)})


def test_out_db_needs_the_output_attribute(tmp_path):
    db = graph_db(tmp_path)
    write_graph(db)
    task = make_task(
        tmp_path,
        db,
        mean_attrs={"intensity": "mean_intensity"},
        out_db=SQLite(path=tmp_path / "segments.db"),
    )
    with pytest.raises(
        ValueError, match="'mean_intensity' is not a node attribute of out_db"
    ):
        task.run_blockwise(multiprocessing=False)


def test_json_round_trip_and_timeout(tmp_path):
    task = make_task(
        tmp_path, graph_db(tmp_path), starting_lut=LUT(path=tmp_path / "s")
    )
    again = GraphMWS.model_validate_json(task.model_dump_json())
    assert again == task
    assert again.task_name == "lut-graph-mws"
    assert again.block_timeout >= 7 * 24 * 3600
    assert make_task(tmp_path, graph_db(tmp_path), timeout=60).block_timeout == 60


def test_kernels_by_hand():
    u, v = np.array([1, 1]), np.array([2, 3])
    attrs = {"a": np.array([0.9, NAN]), "b": np.array([0.2, 0.8])}
    eu, ev, ew = weighted_edges(u, v, attrs, {"a": (2.0, -1.0), "b": (1.0, 0.0)})
    assert list(zip(eu.tolist(), ev.tolist(), ew.tolist(), strict=True)) == [
        (1, 2, pytest.approx(0.8)),
        (1, 2, pytest.approx(0.2)),
        (1, 3, pytest.approx(0.8)),
    ]
    _, _, summed = weighted_edges(
        u, v, attrs, {"a": (2.0, -1.0), "b": (1.0, 0.0)}, False
    )
    assert summed == pytest.approx([1.0, 0.8])
    segments = mutex_watershed(
        np.array([9, 5, 7, 2**40]),
        np.array([5, 7, 5]),
        np.array([9, 2**40, 7]),
        np.array([1.0, 1.0, -2.0]),
    )
    # 5-7 mutex first, then 5-9 merges; 7 joins the large id
    assert segments.tolist() == [5, 5, 7, 7]
    ids, totals, means = size_weighted_means(
        np.array([3, 3, 8]),
        np.array([1, 3, 2]),
        np.array([[0.0, 4.0], [4.0, 0.0], [1.0, 1.0]]),
    )
    assert ids.tolist() == [3, 8] and totals.tolist() == [4, 2]
    assert means.tolist() == [[3.0, 1.0], [1.0, 1.0]]


def write_large_graph(
    db: SQLite, num_nodes: int, num_edges: int, seed: int = 0
) -> None:
    """Random graph written straight into the SQLite tables."""
    rng = np.random.default_rng(seed)
    db.init()
    graph = db.open("r+")
    ids = np.arange(1, num_nodes + 1)
    positions = rng.uniform(0, 1000, size=(num_nodes, 3))
    graph.cur.executemany(
        "INSERT INTO nodes (id, position_0, position_1, position_2, size, filtered) "
        "VALUES (?, ?, ?, ?, 1, 0)",
        zip(ids.tolist(), *positions.T.tolist(), strict=True),
    )
    u = rng.integers(1, num_nodes + 1, size=num_edges)
    v = rng.integers(1, num_nodes + 1, size=num_edges)
    keep = u != v
    u, v = np.minimum(u, v)[keep], np.maximum(u, v)[keep]
    graph.cur.executemany(
        "INSERT OR IGNORE INTO edges (u, v, aff, lr) VALUES (?, ?, ?, ?)",
        zip(
            u.tolist(),
            v.tolist(),
            rng.random(u.size).tolist(),
            rng.random(u.size).tolist(),
            strict=True,
        ),
    )
    graph.con.commit()
    graph.close()


def test_large_graph_is_fast(tmp_path):
    db = graph_db(tmp_path)
    write_large_graph(db, 100_000, 500_000)
    task = make_task(tmp_path, db, roi=((0, 0, 0), (1000, 1000, 1000)))
    start = time.perf_counter()
    lut = task.solve()
    elapsed = time.perf_counter() - start
    assert lut.shape == (2, 100_000)
    assert np.array_equal(lut[0], np.arange(1, 100_001))
    # a tenth of the 10^6 nodes / 5x10^6 edges that must finish within 60 s
    assert elapsed < 6.0


@pytest.mark.slow
def test_million_nodes_within_a_minute(tmp_path):
    db = graph_db(tmp_path)
    write_large_graph(db, 1_000_000, 5_000_000)
    task = make_task(tmp_path, db, roi=((0, 0, 0), (1000, 1000, 1000)))
    start = time.perf_counter()
    lut = task.solve()
    assert time.perf_counter() - start < 60
    assert lut.shape == (2, 1_000_000)


def test_lut_at_a_url(tmp_path):
    # an s3:// table of a volara 1.0.5 config is written through fsspec
    # (memory:// here: the single block runs in this process)
    db = graph_db(tmp_path)
    write_graph(db)
    lut = LUT(path="memory://tables/graph-mws-test")
    try:
        assert run(make_task(tmp_path, db, lut=lut)) == run(make_task(tmp_path, db))
        assert not (tmp_path / "memory:").exists()
    finally:
        lut.drop()
