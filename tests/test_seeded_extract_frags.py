"""SeededExtractFrags: skeletons grow into whole cells with one label each;
cells without a skeleton stay 0. Plus the skeleton kernels by hand."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from conftest import write_array
from volara.blockwise.seeded_extract_frags import SeededExtractFrags
from volara.datasets import Affs, Labels
from volara.dbs import SQLite
from volara.kernels.affinities import affinities_from_labels
from volara.kernels.skeletons import component_labels, rasterize_skeletons

SHAPE = (12, 40, 40)
VOXEL_SIZE = (40, 4, 4)
OFFSET = (40, 8, 8)
BLOCK = (6, 10, 20)
NEIGHBORHOOD = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 4, 0), (0, 0, 4)]
BIAS = [-0.5, -0.5, -0.5, -0.7, -0.7]

# Skeleton "B" (nodes 3-6) in cell B and skeleton "A" (nodes 10-13) in cell
# A, as voxel indices; cell C has none. A is a loop whose nodes all lie in
# the first and last row of blocks along y: the blocks in between (and their
# context) see only its edges.
SKELETON_NODES = {
    3: (2, 5, 30),
    4: (2, 15, 30),
    5: (9, 15, 30),
    6: (9, 5, 30),
    10: (1, 2, 5),
    11: (1, 37, 5),
    12: (10, 37, 5),
    13: (10, 2, 5),
}
SKELETON_EDGES = [(3, 4), (4, 5), (5, 6), (10, 11), (11, 12), (12, 13)]


def cells() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Three box cells separated by background seams: A (x < 19), B and C
    (x > 20, split at y 19-20)."""
    labels = np.zeros(SHAPE, dtype=np.uint64)
    labels[:, :, :19] = 1
    labels[:, :19, 21:] = 2
    labels[:, 21:, 21:] = 3
    return labels, {"A": labels == 1, "B": labels == 2, "C": labels == 3}


def world(voxel) -> tuple[float, ...]:
    return tuple(
        float(o + (v + 0.5) * s)
        for o, v, s in zip(OFFSET, voxel, VOXEL_SIZE, strict=True)
    )


def setup(tmp_path: Path, noise: float = 0.1):
    labels, masks = cells()
    rng = np.random.default_rng(0)
    affs = affinities_from_labels(labels, NEIGHBORHOOD)
    affs = np.clip(affs + rng.normal(0, noise, affs.shape), 0, 1).astype(np.float32)
    write_array(
        tmp_path / "data.zarr" / "affs",
        affs,
        VOXEL_SIZE,
        OFFSET,
        attrs={"neighborhood": [list(o) for o in NEIGHBORHOOD]},
    )
    skeletons = SQLite(path=tmp_path / "skeletons.db")
    skeletons.init()
    graph = nx.Graph()
    for node, voxel in SKELETON_NODES.items():
        graph.add_node(node, position=world(voxel), size=1, filtered=False)
    graph.add_edges_from(SKELETON_EDGES, distance=0.0)
    db = skeletons.open("r+")
    db.write_graph(graph)
    db.close()
    return Affs(store=tmp_path / "data.zarr" / "affs"), skeletons, masks


def make_task(tmp_path, affs, skeletons, name="segs", **kwargs):
    args = dict(
        affs_data=affs,
        segs_data=Labels(store=tmp_path / "data.zarr" / name),
        graph_db=skeletons,
        bias=BIAS,
        block_size=BLOCK,
        context=(2, 4, 4),
    )
    args.update(kwargs)
    return SeededExtractFrags(**args)


def test_two_skeletons_grow_into_their_two_cells(tmp_path):
    affs, skeletons, masks = setup(tmp_path)
    task = make_task(tmp_path, affs, skeletons, num_workers=2)
    state = task.run_blockwise(multiprocessing=True)[task.task_name]
    assert state.completed_count == state.total_block_count == 16
    segments = task.segs_data.array()
    assert segments.dtype == np.uint64 and tuple(segments.offset) == OFFSET
    segments = segments[:]
    # labels by smallest node id: skeleton B (node 3) is 1, A (node 10) is 2
    assert np.all(segments[masks["B"]] == 1)
    assert np.all(segments[masks["A"]] == 2)
    assert np.all(segments[masks["C"]] == 0)
    background = ~(masks["A"] | masks["B"] | masks["C"])
    assert np.all(segments[background] == 0)
    assert set(np.unique(segments)) == {0, 1, 2}


def test_mask_keeps_segments_out(tmp_path):
    affs, skeletons, masks = setup(tmp_path)
    mask = np.ones(SHAPE, dtype=np.uint8)
    mask[:, :, 35:] = 0
    write_array(tmp_path / "data.zarr" / "mask", mask, VOXEL_SIZE, OFFSET)
    task = make_task(
        tmp_path,
        affs,
        skeletons,
        mask_data=Labels(store=tmp_path / "data.zarr" / "mask"),
    )
    task.run_blockwise(multiprocessing=False)
    segments = task.segs_data.array()[:]
    assert np.all(segments[:, :, 35:] == 0)
    assert np.all(segments[masks["A"]] == 2)
    assert np.all(segments[:, :, :35][masks["B"][:, :, :35]] == 1)
    assert np.all(segments[masks["C"]] == 0)


def test_missing_skeleton_database_is_refused_before_any_block(tmp_path):
    affs, _, _ = setup(tmp_path)
    task = make_task(tmp_path, affs, SQLite(path=tmp_path / "nowhere.db"))
    with pytest.raises(FileNotFoundError, match="graph_db"):
        task.run_blockwise(multiprocessing=False)
    assert not Path(task.segs_data.store).exists()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(bias=[-0.5] * 3), ["bias", "3", "5"]),
        (dict(strides=[(1, 1, 1)] * 2), ["strides", "2", "5"]),
    ],
)
def test_inconsistent_parameters_are_refused(tmp_path, kwargs, words):
    affs, skeletons, _ = setup(tmp_path)
    with pytest.raises(ValueError) as error:
        make_task(tmp_path, affs, skeletons, **kwargs)
    for word in words:
        assert word in str(error.value)


def test_json_round_trip(tmp_path):
    affs, skeletons, _ = setup(tmp_path)
    task = make_task(tmp_path, affs, skeletons, strides=[(1, 1, 1)] * 5)
    assert SeededExtractFrags.model_validate_json(task.model_dump_json()) == task
    assert task.task_name == "segs-seeded-extract-frags"


# ------------------------------------------------------------------ kernels


def test_component_labels_follow_the_smallest_node_id():
    labels = component_labels([7, 2, 9, 4, 30], [(7, 9), (2, 4)])
    assert labels == {2: 1, 4: 1, 7: 2, 9: 2, 30: 3}


def test_rasterize_paints_nodes_and_the_lines_between_them():
    points = np.array([[0.5, 0.5], [0.5, 4.5], [3.5, 0.5], [9.0, 9.0]])
    labels = np.array([1, 1, 2, 3], dtype=np.uint64)
    seeds = rasterize_skeletons((4, 6), points, labels, edges=np.array([[0, 1]]))
    expected = np.zeros((4, 6), dtype=np.uint64)
    expected[0, :5] = 1  # the edge from (0, 0) to (0, 4)
    expected[3, 0] = 2  # a lone node; node 3 lies outside
    np.testing.assert_array_equal(seeds, expected)


def test_rasterized_diagonal_has_no_gaps():
    points = np.array([[0.5, 0.5, 0.5], [7.5, 3.5, 5.5]])
    seeds = rasterize_skeletons((8, 8, 8), points, np.array([4, 4]), np.array([[0, 1]]))
    painted = np.argwhere(seeds == 4)
    assert {tuple(p) for p in painted} >= {(0, 0, 0), (7, 3, 5)}
    # consecutive painted voxels along the line touch (26-connectivity)
    ordered = painted[np.argsort(painted[:, 0], kind="stable")]
    assert np.all(np.abs(np.diff(ordered, axis=0)).max(axis=1) <= 1)
