"""DistanceAgglom on a known fragment volume with embeddings on the nodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from conftest import write_array
from volara.blockwise.distance_agglom import DistanceAgglom
from volara.datasets import Labels
from volara.dbs import DB, SQLite
from volara.lut import LUT

VOXEL_SIZE = (1, 2, 2)


def fragments_volume() -> np.ndarray:
    """A 4x4 grid of (3, 3, 3)-voxel tiles per z-slab, two slabs: 32 tiles,
    ids 1..32, with a background gap between the slabs on one half."""
    ids = np.arange(1, 33, dtype=np.uint64).reshape(2, 4, 4)
    fragments = np.repeat(np.repeat(np.repeat(ids, 3, 0), 3, 1), 3, 2)
    fragments[3, :6, :] = 0  # slab 2 no longer touches slab 1 for y < 6
    return fragments


def embedding(fragment: int) -> tuple[float, float]:
    angle = fragment * 0.3
    return (np.cos(angle) * (1 + fragment % 3), np.sin(angle) * (1 + fragment % 3))


def reference_pairs(fragments: np.ndarray) -> set[tuple[int, int]]:
    """Face-adjacent pairs, by plain loops."""
    pairs = set()
    for axis in range(3):
        for index in np.ndindex(fragments.shape):
            other = list(index)
            other[axis] += 1
            if other[axis] >= fragments.shape[axis]:
                continue
            a, b = int(fragments[index]), int(fragments[tuple(other)])
            if a and b and a != b:
                pairs.add((min(a, b), max(a, b)))
    return pairs


def setup(tmp_path: Path, db: DB) -> np.ndarray:
    fragments = fragments_volume()
    write_array(tmp_path / "data.zarr/frags", fragments, voxel_size=VOXEL_SIZE)
    db.init()
    graph = db.open("r+")
    nodes = {}
    for fragment in range(1, 33):
        voxels = np.argwhere(fragments == fragment)
        nodes[fragment] = {
            "position": tuple(((voxels.mean(0) + 0.5) * VOXEL_SIZE).tolist()),
            "size": len(voxels),
            "filtered": False,
            "emb": embedding(fragment),
            "level": float(fragment),
        }
    graph.write_nodes(nodes)
    graph.close()
    return fragments


def sqlite_db(tmp_path: Path, name: str = "graph") -> SQLite:
    return SQLite(path=tmp_path / f"{name}.db", node_attrs={"emb": 2, "level": "float"})


def make_task(tmp_path: Path, db: DB, **kwargs) -> DistanceAgglom:
    options = dict(
        storage=db,
        frags_data=Labels(store=tmp_path / "data.zarr/frags"),
        distance_keys=["emb"],
        block_size=(3, 5, 5),
        context=(3, 3, 3),
    )
    options.update(kwargs)
    return DistanceAgglom(**options)


def stored_edges(db: DB) -> dict[tuple[int, int], float]:
    graph = db.open("r")
    edges = {(e["u"], e["v"]): e["distance"] for e in graph.read_edges()}
    graph.close()
    return edges


def cosine_distance(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return 1 - float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_serial_and_parallel_write_every_touching_pair_once(tmp_path):
    serial_db, parallel_db = sqlite_db(tmp_path, "serial"), sqlite_db(tmp_path, "par")
    fragments = setup(tmp_path, serial_db)
    setup(tmp_path, parallel_db)
    make_task(tmp_path, serial_db).run_blockwise(multiprocessing=False)
    states = make_task(tmp_path, parallel_db, num_workers=2).run_blockwise()
    assert states["par-distance-agglom"].completed_count == 2 * 3 * 3
    serial = stored_edges(serial_db)
    assert serial == stored_edges(parallel_db)
    reference = reference_pairs(fragments)
    assert set(serial) == reference
    assert (1, 17) not in reference and (13, 29) in reference  # the gap
    for (u, v), distance in serial.items():
        assert distance == pytest.approx(cosine_distance(embedding(u), embedding(v)))


@pytest.mark.parametrize("metric", ["euclidean", "max"])
def test_metrics_and_background(tmp_path, metric):
    db = sqlite_db(tmp_path)
    setup(tmp_path, db)
    make_task(
        tmp_path,
        db,
        distance_metric=metric,
        distance_keys=["emb", "level"],
        background_intensities=[0.5, 1.0],
    ).run_blockwise(multiprocessing=False)
    edges = stored_edges(db)
    difference = np.array([*embedding(1), 1.0]) - np.array([*embedding(2), 2.0])
    expected = (
        np.linalg.norm(difference)
        if metric == "euclidean"
        else np.abs(difference).max()
    )
    assert edges[(1, 2)] == pytest.approx(expected)


def test_background_changes_cosine(tmp_path):
    db = sqlite_db(tmp_path)
    setup(tmp_path, db)
    make_task(
        tmp_path, db, distance_keys=["level"], background_intensities=[3.0]
    ).run_blockwise(multiprocessing=False)
    edges = stored_edges(db)
    assert edges[(2, 6)] == pytest.approx(2.0)  # -1 and 3: opposite directions
    assert edges[(1, 2)] == pytest.approx(0.0)  # -2 and -1: the same direction
    assert edges[(2, 3)] == pytest.approx(1.0)  # 0 has no direction (eps)


def test_threshold_keeps_close_pairs_only(tmp_path):
    db = sqlite_db(tmp_path)
    fragments = setup(tmp_path, db)
    make_task(tmp_path, db, distance_threshold=0.2).run_blockwise(multiprocessing=False)
    edges = stored_edges(db)
    expected = {
        pair
        for pair in reference_pairs(fragments)
        if cosine_distance(embedding(pair[0]), embedding(pair[1])) <= 0.2
    }
    assert set(edges) == expected and 0 < len(expected) < len(
        reference_pairs(fragments)
    )


def test_rerun_adds_nothing_and_drop_artifacts(tmp_path):
    db = sqlite_db(tmp_path)
    setup(tmp_path, db)
    task = make_task(tmp_path, db)
    task.run_blockwise(multiprocessing=False)
    before = stored_edges(db)
    task.drop()
    task.run_blockwise(multiprocessing=False)
    assert stored_edges(db) == before
    task.drop_artifacts()
    assert stored_edges(db) == {}


@pytest.mark.postgres
def test_postgres(tmp_path, postgres):
    pg = postgres.model_copy(update={"node_attrs": {"emb": 2, "level": "float"}})
    fragments = setup(tmp_path, pg)
    make_task(tmp_path, pg, num_workers=2).run_blockwise()
    edges = stored_edges(pg)
    assert set(edges) == reference_pairs(fragments)
    for (u, v), distance in edges.items():
        expected = cosine_distance(embedding(u), embedding(v))
        assert distance == pytest.approx(expected, abs=1e-5)  # stored as REAL


def test_bad_inputs(tmp_path):
    db = sqlite_db(tmp_path)
    setup(tmp_path, db)
    with pytest.raises(ValidationError, match="a look-up table cannot hold"):
        make_task(tmp_path, db, storage=LUT(path=tmp_path / "lut"))
    with pytest.raises(ValidationError, match="give one per distance key"):
        make_task(tmp_path, db, background_intensities=[0.0, 1.0])
    task = make_task(tmp_path, db, distance_keys=["intensity"])
    with pytest.raises(ValueError, match="'intensity' is not a node attribute"):
        task.run_blockwise(multiprocessing=False)
    with pytest.raises(ValueError, match="distance_keys is empty"):
        make_task(tmp_path, db, distance_keys=None).run_blockwise(multiprocessing=False)
    assert stored_edges(db) == {}


def test_json_round_trip(tmp_path):
    task = make_task(tmp_path, sqlite_db(tmp_path), distance_metric="max")
    again = DistanceAgglom.model_validate_json(task.model_dump_json())
    assert again == task and isinstance(again.storage, SQLite)
