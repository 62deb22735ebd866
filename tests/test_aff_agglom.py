"""AffAgglom on a known fragment volume with nodes written by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi

from conftest import write_array
from volara.blockwise.aff_agglom import AffAgglom
from volara.datasets import Affs, Labels
from volara.dbs import DB, SQLite

VOXEL_SIZE = (2, 1, 1)
NEIGHBORHOOD = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 2)]
SCORES = {"xy": [(0, 1, 0), (0, 0, 1)], "z": [(1, 0, 0)], "far": [(0, 0, 2)]}
EDGE_ATTRS = {"xy": "float", "z": "float", "far": "float"}


def tiled_fragments(shape=(12, 12, 12), tile=(3, 3, 3), seed=0) -> np.ndarray:
    """Boxes of ``tile`` voxels with shuffled ids, a few background voxels."""
    rng = np.random.default_rng(seed)
    grid = tuple(s // t for s, t in zip(shape, tile, strict=True))
    ids = rng.permutation(np.prod(grid)).reshape(grid).astype(np.uint64) + 10
    fragments = ids
    for axis, t in enumerate(tile):
        fragments = np.repeat(fragments, t, axis=axis)
    fragments[rng.random(shape) < 0.05] = 0
    return fragments


def affinities_from(fragments: np.ndarray, seed=1) -> np.ndarray:
    """High affinity inside a fragment, low across, plus noise; float32."""
    rng = np.random.default_rng(seed)
    affs = np.zeros((len(NEIGHBORHOOD), *fragments.shape), dtype=np.float32)
    for channel, offset in enumerate(NEIGHBORHOOD):
        for index in np.ndindex(fragments.shape):
            other = tuple(i + o for i, o in zip(index, offset, strict=True))
            if all(0 <= o < s for o, s in zip(other, fragments.shape, strict=True)):
                same = fragments[index] == fragments[other] != 0
                affs[(channel, *index)] = (0.8 if same else 0.2) + rng.uniform(
                    -0.2, 0.2
                )
    return affs


def reference_means(fragments: np.ndarray, affs: np.ndarray) -> dict:
    """Per pair and score, the mean affinity over the whole volume, by
    plain loops (independent of the kernel under test)."""
    means: dict = {}
    for (pair, name), (total, count) in reference_sums(fragments, affs).items():
        means.setdefault(pair, dict.fromkeys(SCORES))[name] = total / count
    return means


def reference_sums(fragments: np.ndarray, affs: np.ndarray) -> dict:
    """Per (pair, score): the sum of the affinities over the pair's contacts
    along the score's offsets, and the number of contacts."""
    sums: dict = {}
    for channel, offset in enumerate(NEIGHBORHOOD):
        for index in np.ndindex(fragments.shape):
            other = tuple(i + o for i, o in zip(index, offset, strict=True))
            if not all(0 <= o < s for o, s in zip(other, fragments.shape, strict=True)):
                continue
            a, b = int(fragments[index]), int(fragments[other])
            if a == 0 or b == 0 or a == b:
                continue
            pair = (min(a, b), max(a, b))
            for name, offsets in SCORES.items():
                if offset in offsets:
                    total, count = sums.setdefault((pair, name), (0.0, 0))
                    sums[(pair, name)] = (
                        total + float(affs[(channel, *index)]),
                        count + 1,
                    )
    return sums


def write_fragment_nodes(db: DB, fragments: np.ndarray) -> dict[int, np.ndarray]:
    """One node per fragment at its center of mass (world units)."""
    db.init()
    graph = db.open("r+")
    positions = {}
    nodes = {}
    for fragment in np.unique(fragments):
        if fragment == 0:
            continue
        voxels = np.argwhere(fragments == fragment)
        position = (voxels.mean(axis=0) + 0.5) * np.array(VOXEL_SIZE)
        positions[int(fragment)] = position
        nodes[int(fragment)] = {
            "position": tuple(position.tolist()),
            "size": len(voxels),
            "filtered": False,
        }
    graph.write_nodes(nodes)
    graph.close()
    return positions


def setup_volume(tmp_path: Path, db: DB, seed=0):
    fragments = tiled_fragments(seed=seed)
    affs = affinities_from(fragments, seed=seed + 1)
    write_array(tmp_path / "data.zarr/frags", fragments, voxel_size=VOXEL_SIZE)
    write_array(
        tmp_path / "data.zarr/affs",
        affs,
        voxel_size=VOXEL_SIZE,
        attrs={"neighborhood": [list(o) for o in NEIGHBORHOOD]},
    )
    positions = write_fragment_nodes(db, fragments)
    return fragments, affs, positions


def make_task(tmp_path: Path, db: DB, **kwargs) -> AffAgglom:
    options = dict(
        db=db,
        affs_data=Affs(store=tmp_path / "data.zarr/affs"),
        frags_data=Labels(store=tmp_path / "data.zarr/frags"),
        block_size=(4, 4, 4),
        context=(5, 5, 5),
        scores=SCORES,
    )
    options.update(kwargs)
    return AffAgglom(**options)


def stored_edges(db: DB) -> dict:
    graph = db.open("r")
    edges = graph.read_edges()
    graph.close()
    return {(e["u"], e["v"]): e for e in edges}


def sqlite_db(tmp_path: Path, name: str) -> SQLite:
    return SQLite(path=tmp_path / f"{name}.db", edge_attrs=EDGE_ATTRS)


def assert_matches_reference(edges: dict, reference: dict, positions: dict, rel=1e-6):
    assert sorted(edges) == sorted(reference)
    for pair, means in reference.items():
        for name, mean in means.items():
            if mean is None:
                assert edges[pair][name] is None
            else:
                assert edges[pair][name] == pytest.approx(mean, rel=rel)
        distance = np.linalg.norm(positions[pair[0]] - positions[pair[1]])
        assert edges[pair]["distance"] == pytest.approx(distance, rel=rel)


def test_serial_and_parallel_match_the_whole_volume(tmp_path):
    serial_db, parallel_db = (
        sqlite_db(tmp_path, "serial"),
        sqlite_db(tmp_path, "parallel"),
    )
    fragments, affs, positions = setup_volume(tmp_path, serial_db)
    write_fragment_nodes(parallel_db, fragments)

    states = make_task(tmp_path, serial_db).run_blockwise(multiprocessing=False)
    assert states["serial-aff-agglom"].completed_count == 27
    states = make_task(tmp_path, parallel_db, num_workers=2).run_blockwise()
    assert states["parallel-aff-agglom"].completed_count == 27
    assert states["parallel-aff-agglom"].failed_count == 0

    serial, parallel = stored_edges(serial_db), stored_edges(parallel_db)
    assert serial == parallel
    reference = reference_means(fragments, affs)
    # every pair in contact along any scored offset, once
    assert len(serial) == len(reference) > 50
    assert_matches_reference(serial, reference, positions)
    # the tiles' faces give both kinds of score, the long offset adds pairs
    assert any(e["far"] is None for e in serial.values())
    assert any(e["xy"] is None for e in serial.values())


def test_contact_counts_are_written_where_the_db_has_a_column_for_them(tmp_path):
    # hierarchical agglomeration weighs each edge's mean by these counts
    db = SQLite(
        path=tmp_path / "counted.db",
        edge_attrs={**EDGE_ATTRS, "xy__size": "float", "z__size": "float"},
    )
    fragments, affs, _ = setup_volume(tmp_path, db)
    make_task(tmp_path, db, num_workers=2).run_blockwise()

    edges = stored_edges(db)
    sums = reference_sums(fragments, affs)
    assert len(edges) > 50
    for pair, edge in edges.items():
        for name in ("xy", "z"):
            _, count = sums.get((pair, name), (0.0, 0))
            assert edge[f"{name}__size"] == count
    assert {edge["xy__size"] for edge in edges.values()} >= {0, 9}


def test_threads_in_each_worker_write_every_edge(tmp_path):
    # several threads per worker share one SQLite file: each needs its own
    # connection, or every block of the second thread fails
    db = sqlite_db(tmp_path, "threads")
    fragments, affs, positions = setup_volume(tmp_path, db)
    task = make_task(tmp_path, db, num_workers=2, num_cache_workers=2)
    states = task.run_blockwise()
    assert states["threads-aff-agglom"].completed_count == 27
    assert states["threads-aff-agglom"].failed_count == 0
    assert_matches_reference(
        stored_edges(db), reference_means(fragments, affs), positions
    )


def test_rerun_and_retried_block_add_nothing(tmp_path):
    db = sqlite_db(tmp_path, "graph")
    fragments, affs, _ = setup_volume(tmp_path, db)
    task = make_task(tmp_path, db)
    task.run_blockwise(multiprocessing=False)
    before = stored_edges(db)
    # a block processed again (as after a worker died before reporting it)
    task.process_roi(Roi((8, 4, 4), (8, 4, 4)), context=Coordinate(10, 5, 5))
    # and the whole task again after forgetting its progress
    task.drop(drop_outputs=False)
    states = task.run_blockwise(multiprocessing=False)
    assert states[task.task_name].completed_count == 27
    assert stored_edges(db) == before
    task.drop_artifacts()
    assert stored_edges(db) == {}
    # the nodes are kept
    assert len(db.open("r").read_nodes()) == len(np.unique(fragments)) - 1


def test_small_context_misses_contacts_outside_the_read_region(tmp_path):
    db = sqlite_db(tmp_path, "graph")
    fragments, affs, _ = setup_volume(tmp_path, db)
    make_task(tmp_path, db, context=(0, 0, 0)).run_blockwise(multiprocessing=False)
    edges = stored_edges(db)
    reference = reference_means(fragments, affs)
    # without context a block does not see the contacts of its fragments
    # that lie in neighbouring blocks (documented limitation), never more
    assert set(edges) < set(reference)


def test_uint8_affinities_are_scaled(tmp_path):
    db = sqlite_db(tmp_path, "graph")
    fragments = np.zeros((2, 2, 4), dtype=np.uint64)
    fragments[:, :, :2], fragments[:, :, 2:] = 1, 2
    affs = np.zeros((4, 2, 2, 4), dtype=np.uint8)
    affs[2, :, :, 1] = [[51, 102], [153, 204]]  # 0.2, 0.4, 0.6, 0.8
    write_array(tmp_path / "data.zarr/frags", fragments, voxel_size=VOXEL_SIZE)
    write_array(
        tmp_path / "data.zarr/affs",
        affs,
        voxel_size=VOXEL_SIZE,
        attrs={"neighborhood": [list(o) for o in NEIGHBORHOOD]},
    )
    write_fragment_nodes(db, fragments)
    make_task(tmp_path, db).run_blockwise(multiprocessing=False)
    edges = stored_edges(db)
    assert list(edges) == [(1, 2)]
    assert edges[(1, 2)]["xy"] == pytest.approx(0.5)
    assert edges[(1, 2)]["z"] is None
    assert edges[(1, 2)]["distance"] == pytest.approx(2.0)


@pytest.mark.postgres
def test_postgres_matches_sqlite(tmp_path, postgres):
    pg = postgres.model_copy(update={"edge_attrs": EDGE_ATTRS})
    lite = sqlite_db(tmp_path, "graph")
    fragments, affs, positions = setup_volume(tmp_path, lite)
    write_fragment_nodes(pg, fragments)
    make_task(tmp_path, lite).run_blockwise(multiprocessing=False)
    task = make_task(tmp_path, pg, num_workers=2)
    task.run_blockwise()
    edges = stored_edges(pg)
    # PostgreSQL stores REAL (float32) values
    assert_matches_reference(
        edges, reference_means(fragments, affs), positions, rel=1e-5
    )
    assert sorted(edges) == sorted(stored_edges(lite))
    task.drop(drop_outputs=False)
    task.run_blockwise(multiprocessing=False)
    assert len(stored_edges(pg)) == len(edges)


def test_score_missing_from_db_is_refused_before_any_block(tmp_path):
    db = SQLite(path=tmp_path / "graph.db", edge_attrs={"xy": "float"})
    setup_volume(tmp_path, db)
    task = make_task(tmp_path, db)
    with pytest.raises(ValueError, match=r"'z' is not an edge attribute.*edge_attrs"):
        task.run_blockwise(multiprocessing=False)
    assert stored_edges(db) == {}
    assert not task.block_ds.exists()


def test_offset_outside_neighborhood_is_refused(tmp_path):
    db = sqlite_db(tmp_path, "graph")
    setup_volume(tmp_path, db)
    task = make_task(tmp_path, db, scores={"xy": [(0, 0, 3)]})
    with pytest.raises(ValueError, match=r"\(0, 0, 3\) is not in the neighborhood"):
        task.run_blockwise(multiprocessing=False)
    assert stored_edges(db) == {}


def test_voxel_size_mismatch_is_refused(tmp_path):
    db = sqlite_db(tmp_path, "graph")
    setup_volume(tmp_path, db)
    affs = np.zeros((4, 12, 12, 12), dtype=np.float32)
    write_array(
        tmp_path / "other.zarr/affs",
        affs,
        voxel_size=(1, 1, 1),
        attrs={"neighborhood": [list(o) for o in NEIGHBORHOOD]},
    )
    task = make_task(tmp_path, db, affs_data=Affs(store=tmp_path / "other.zarr/affs"))
    with pytest.raises(ValueError, match="affs_data: voxel size"):
        task.run_blockwise(multiprocessing=False)


def test_json_round_trip(tmp_path):
    db = sqlite_db(tmp_path, "graph")
    setup_volume(tmp_path, db)
    task = make_task(tmp_path, db)
    again = AffAgglom.model_validate_json(task.model_dump_json())
    assert again == task
    assert again.task_name == "graph-aff-agglom"
    assert again.scores["xy"] == [Coordinate(0, 1, 0), Coordinate(0, 0, 1)]


def test_empty_score_group_is_refused(tmp_path):
    db = sqlite_db(tmp_path, "graph")
    setup_volume(tmp_path, db)
    with pytest.raises(ValueError, match="score 'xy' has no offsets"):
        make_task(tmp_path, db, scores={"xy": []})


def test_uneven_blocks_give_the_same_edges(tmp_path):
    # Blocks that do not divide the volume (cropped at its end) still write
    # every pair exactly once, with whole-volume scores.
    db = sqlite_db(tmp_path, "graph")
    fragments, affs, positions = setup_volume(tmp_path, db, seed=3)
    states = make_task(tmp_path, db, block_size=(5, 5, 7)).run_blockwise(
        multiprocessing=False
    )
    assert states["graph-aff-agglom"].completed_count == 3 * 3 * 2
    assert_matches_reference(
        stored_edges(db), reference_means(fragments, affs), positions
    )


def test_volara1_bulk_write_is_accepted_and_changes_nothing(tmp_path):
    # volara 1.0.5 configs carry bulk_write (its dumps always do); with it,
    # volara 1 let the first block to finish score an edge. Here the edges
    # and scores are the whole-volume ones either way.
    db = sqlite_db(tmp_path, "graph")
    fragments, affs, positions = setup_volume(tmp_path, db)
    task = make_task(tmp_path, db, bulk_write=True, num_workers=2)
    again = AffAgglom.model_validate_json(task.model_dump_json())
    assert again == task and again.bulk_write
    states = again.run_blockwise()
    assert states["graph-aff-agglom"].completed_count == 27
    assert_matches_reference(
        stored_edges(db), reference_means(fragments, affs), positions
    )
