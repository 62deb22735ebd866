"""DistanceAgglom on a known fragment volume with embeddings on the nodes.

As in volara 1.0.5: an edge joins two fragments whose voxels come within
`distance_threshold` (world units); ``distance`` is the smallest distance
between their voxels, ``<key>_similarity`` compares their node attributes.
"""

from __future__ import annotations

from itertools import combinations
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
EDGE_ATTRS = {"emb_similarity": "float", "level_similarity": "float"}


def fragments_volume() -> np.ndarray:
    """A 4x4 grid of (3, 3, 3)-voxel tiles per z-slab, two slabs: 32 tiles,
    ids 1..32, with a background gap between the slabs on one half."""
    ids = np.arange(1, 33, dtype=np.uint64).reshape(2, 4, 4)
    fragments = np.repeat(np.repeat(np.repeat(ids, 3, 0), 3, 1), 3, 2)
    fragments[3, :6, :] = 0  # slab 2 starts one voxel lower for y < 6
    return fragments


def embedding(fragment: int) -> tuple[float, float]:
    angle = fragment * 0.3
    return (np.cos(angle) * (1 + fragment % 3), np.sin(angle) * (1 + fragment % 3))


def reference_distances(fragments: np.ndarray, limit: float) -> dict:
    """Per pair of fragments within ``limit``, the smallest distance between
    two of their voxels (world units), over every voxel pair."""
    centers = {
        int(i): np.argwhere(fragments == i) * np.array(VOXEL_SIZE)
        for i in np.unique(fragments)
        if i != 0
    }
    result = {}
    for a, b in combinations(sorted(centers), 2):
        differences = centers[a][:, None, :] - centers[b][None, :, :]
        distance = float(np.sqrt((differences**2).sum(-1)).min())
        if distance <= limit:
            result[(a, b)] = distance
    return result


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def write_nodes(db: DB, fragments: np.ndarray, drop_level: int | None = None) -> None:
    db.init()
    graph = db.open("r+")
    nodes = {}
    for fragment in np.unique(fragments):
        if fragment == 0:
            continue
        voxels = np.argwhere(fragments == fragment)
        fragment = int(fragment)
        nodes[fragment] = {
            "position": tuple(((voxels.mean(0) + 0.5) * VOXEL_SIZE).tolist()),
            "size": len(voxels),
            "filtered": False,
            "emb": embedding(fragment),
            "level": None if fragment == drop_level else float(fragment),
        }
    graph.write_nodes(nodes)
    graph.close()


def setup(tmp_path: Path, db: DB, fragments: np.ndarray | None = None, **kwargs):
    fragments = fragments_volume() if fragments is None else fragments
    write_array(tmp_path / "data.zarr/frags", fragments, voxel_size=VOXEL_SIZE)
    write_nodes(db, fragments, **kwargs)
    return fragments


def sqlite_db(tmp_path: Path, name: str = "graph", edge_attrs=None) -> SQLite:
    return SQLite(
        path=tmp_path / f"{name}.db",
        node_attrs={"emb": 2, "level": "float"},
        edge_attrs=EDGE_ATTRS if edge_attrs is None else edge_attrs,
    )


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


def stored_edges(db: DB) -> dict[tuple[int, int], dict]:
    graph = db.open("r")
    edges = {(e["u"], e["v"]): e for e in graph.read_edges()}
    graph.close()
    return edges


def test_serial_and_parallel_write_every_close_pair_once(tmp_path):
    serial_db, parallel_db = sqlite_db(tmp_path, "serial"), sqlite_db(tmp_path, "par")
    fragments = setup(tmp_path, serial_db)
    write_nodes(parallel_db, fragments)
    # no distance_threshold: the smallest extent of the context, min(3*1, 3*2)
    make_task(tmp_path, serial_db).run_blockwise(multiprocessing=False)
    states = make_task(tmp_path, parallel_db, num_workers=2).run_blockwise()
    assert states["par-distance-agglom"].completed_count == 2 * 3 * 3
    serial = stored_edges(serial_db)
    assert serial == stored_edges(parallel_db)
    reference = reference_distances(fragments, 3.0)
    assert set(serial) == set(reference)
    # face neighbours along z (1) and y/x (2), diagonal ones (sqrt 5, sqrt 8,
    # 3) and the tiles across the gap (2), but nothing more than 3 apart
    assert {round(e["distance"] ** 2) for e in serial.values()} == {1, 4, 5, 8, 9}
    assert serial[(1, 17)]["distance"] == 2.0  # across the gap
    assert serial[(9, 25)]["distance"] == 1.0  # no gap there
    assert (1, 3) not in serial  # a whole tile between them: 8 apart
    for pair, edge in serial.items():
        assert edge["distance"] == pytest.approx(reference[pair])
        assert edge["emb_similarity"] == pytest.approx(
            cosine(embedding(pair[0]), embedding(pair[1]))
        )
        assert edge["level_similarity"] is None  # "level" is not a distance key


def test_threshold_is_a_distance_between_voxels(tmp_path):
    db = sqlite_db(tmp_path)
    fragments = setup(tmp_path, db)
    make_task(tmp_path, db, distance_threshold=1.5).run_blockwise(multiprocessing=False)
    edges = stored_edges(db)
    # only the tiles touching along z (voxel size 1) are that close
    assert set(edges) == set(reference_distances(fragments, 1.5))
    assert {e["distance"] for e in edges.values()} == {1.0}
    assert (1, 17) not in edges and (9, 25) in edges


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
    difference = np.array(embedding(1)) - np.array(embedding(2))
    expected = (
        np.linalg.norm(difference)
        if metric == "euclidean"
        else np.abs(difference).max()
    )
    # similarities: larger is more alike, one per key
    assert edges[(1, 2)]["emb_similarity"] == pytest.approx(-expected)
    assert edges[(1, 2)]["level_similarity"] == pytest.approx(-1.0)
    assert edges[(1, 2)]["distance"] == 2.0


def test_background_changes_cosine(tmp_path):
    db = sqlite_db(tmp_path)
    setup(tmp_path, db)
    make_task(
        tmp_path, db, distance_keys=["level"], background_intensities=[3.0]
    ).run_blockwise(multiprocessing=False)
    edges = stored_edges(db)
    assert edges[(2, 6)]["level_similarity"] == pytest.approx(-1.0)  # -1 and 3
    assert edges[(1, 2)]["level_similarity"] == pytest.approx(1.0)  # -2 and -1
    assert edges[(2, 3)]["level_similarity"] == pytest.approx(0.0)  # 0: eps


def test_sheet_between_two_fragments_gets_its_edges(tmp_path):
    # 3 | 4 | 5 along x with 4 one voxel thick: every voxel of 4 touches 3 and
    # 5 (volara 1.0.5 missed such fragments: the Laplacian of 3, 4, 5 is 0)
    fragments = np.zeros((2, 4, 9), dtype=np.uint64)
    fragments[:, :, :4], fragments[:, :, 4], fragments[:, :, 5:] = 3, 4, 5
    db = sqlite_db(tmp_path)
    setup(tmp_path, db, fragments)
    make_task(
        tmp_path, db, block_size=(2, 4, 9), context=(0, 0, 0), distance_threshold=4.0
    ).run_blockwise(multiprocessing=False)
    edges = stored_edges(db)
    assert {pair: e["distance"] for pair, e in edges.items()} == {
        (3, 4): 2.0,
        (3, 5): 4.0,
        (4, 5): 2.0,
    }


def test_partner_centered_outside_the_read_region_is_kept(tmp_path):
    # 1 is a small block at the start of x, 2 a long bar whose center lies
    # beyond the read region of 1's block: the edge is still written, with
    # 2's attributes (volara 1.0.5 wrote it without similarity, or not at all)
    fragments = np.zeros((1, 1, 40), dtype=np.uint64)
    fragments[..., :2], fragments[..., 2:] = 1, 2
    db = sqlite_db(tmp_path)
    setup(tmp_path, db, fragments)
    make_task(
        tmp_path,
        db,
        block_size=(1, 1, 4),
        context=(0, 0, 2),
        distance_threshold=2.0,
    ).run_blockwise(multiprocessing=False)
    edges = stored_edges(db)
    assert list(edges) == [(1, 2)]
    assert edges[(1, 2)]["distance"] == 2.0
    assert edges[(1, 2)]["emb_similarity"] == pytest.approx(
        cosine(embedding(1), embedding(2))
    )


def test_missing_attribute_gives_no_similarity(tmp_path):
    db = sqlite_db(tmp_path)
    setup(tmp_path, db, drop_level=2)
    make_task(tmp_path, db, distance_keys=["level"]).run_blockwise(
        multiprocessing=False
    )
    edges = stored_edges(db)
    assert edges[(1, 2)]["level_similarity"] is None
    assert edges[(1, 2)]["distance"] == 2.0
    assert edges[(1, 5)]["level_similarity"] == pytest.approx(1.0)


def test_without_keys_only_distances(tmp_path):
    db = sqlite_db(tmp_path, edge_attrs={})
    fragments = setup(tmp_path, db)
    make_task(tmp_path, db, distance_keys=None).run_blockwise(multiprocessing=False)
    edges = stored_edges(db)
    reference = reference_distances(fragments, 3.0)
    assert {pair: e["distance"] for pair, e in edges.items()} == pytest.approx(
        reference
    )


def test_rerun_adds_nothing_and_drop_artifacts(tmp_path):
    db = sqlite_db(tmp_path)
    setup(tmp_path, db)
    task = make_task(tmp_path, db)
    task.run_blockwise(multiprocessing=False)
    before = stored_edges(db)
    task.drop(drop_outputs=False)
    task.run_blockwise(multiprocessing=False)
    assert stored_edges(db) == before
    task.drop_artifacts()
    assert stored_edges(db) == {}


@pytest.mark.postgres
def test_postgres(tmp_path, postgres):
    pg = postgres.model_copy(
        update={"node_attrs": {"emb": 2, "level": "float"}, "edge_attrs": EDGE_ATTRS}
    )
    fragments = setup(tmp_path, pg)
    make_task(tmp_path, pg, num_workers=2).run_blockwise()
    edges = stored_edges(pg)
    reference = reference_distances(fragments, 3.0)
    assert set(edges) == set(reference)
    for (u, v), edge in edges.items():
        assert edge["distance"] == pytest.approx(reference[(u, v)], abs=1e-5)
        expected = cosine(embedding(u), embedding(v))
        assert edge["emb_similarity"] == pytest.approx(expected, abs=1e-5)  # REAL


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
    no_column = sqlite_db(tmp_path, edge_attrs={"level_similarity": "float"})
    with pytest.raises(ValueError, match="emb_similarity, which is not an edge attr"):
        make_task(tmp_path, no_column).run_blockwise(multiprocessing=False)
    assert stored_edges(db) == {}


def test_json_round_trip(tmp_path):
    db = sqlite_db(tmp_path)
    setup(tmp_path, db)
    task = make_task(tmp_path, db, distance_metric="max")
    again = DistanceAgglom.model_validate_json(task.model_dump_json())
    assert again == task and isinstance(again.storage, SQLite)
    assert again.max_distance == 3.0
