"""volara 1.0.5's task methods and labels that scripts rely on:
`AffAgglom.agglomerate`, `ComputeShift.compute_shift`, and SeededExtractFrags
writing each skeleton's ``skeleton_id`` as its label."""

from __future__ import annotations

import logging

import daisy
import networkx as nx
import numpy as np
import pytest
from funlib.geometry import Roi

from conftest import write_array
from volara.blockwise import AffAgglom, ComputeShift, SeededExtractFrags
from volara.datasets import Affs, Labels, Raw
from volara.dbs import SQLite
from volara.kernels.affinities import affinities_from_labels
from volara.kernels.skeletons import skeleton_labels

NEIGHBORHOOD_2D = [(1, 0), (0, 1)]

# --------------------------------------------------------- AffAgglom.agglomerate


def agglom_task(tmp_path, scores, affs=None) -> AffAgglom:
    if affs is None:
        affs = np.zeros((2, 6, 6), dtype=np.float32)
    write_array(
        tmp_path / "d.zarr/affs",
        affs,
        voxel_size=(1, 1),
        offset=(0, 0),
        attrs={"neighborhood": [list(o) for o in NEIGHBORHOOD_2D]},
    )
    write_array(
        tmp_path / "d.zarr/frags",
        np.zeros(affs.shape[1:], np.uint64),
        voxel_size=(1, 1),
        offset=(0, 0),
    )
    return AffAgglom(
        db=SQLite(
            path=tmp_path / "g.db", ndim=2, edge_attrs=dict.fromkeys(scores, "float")
        ),
        affs_data=Affs(store=tmp_path / "d.zarr/affs"),
        frags_data=Labels(store=tmp_path / "d.zarr/frags"),
        block_size=(6, 6),
        context=(0, 0),
        scores=scores,
    )


def edges_of(rag: nx.Graph) -> dict:
    return {(min(u, v), max(u, v)): data for u, v, data in rag.edges(data=True)}


def test_agglomerate_scores_each_group_by_its_mean_over_contacts(tmp_path):
    # fragment 5 left of fragment 9 (contacts along (0, 1): rows 0-1), and
    # fragment 9 above fragment 12 (contacts along (1, 0): columns 2-3)
    frags = np.array(
        [
            [5, 5, 9, 9],
            [5, 5, 9, 9],
            [0, 0, 12, 12],
        ],
        dtype=np.uint64,
    )
    affs = np.zeros((2, 3, 4), dtype=np.float32)
    affs[1, 0, 1], affs[1, 1, 1] = 0.2, 0.6  # 5 -> 9 along (0, 1)
    affs[0, 1, 2], affs[0, 1, 3] = 0.5, 1.0  # 9 -> 12 along (1, 0)
    task = agglom_task(tmp_path, {"z": [(1, 0)], "y": [(0, 1)], "all": NEIGHBORHOOD_2D})
    rag = nx.Graph()
    assert task.agglomerate(affs, frags, rag) is None
    edges = edges_of(rag)
    assert set(edges) == {(5, 9), (9, 12)}
    # a score whose offsets never cross a pair is absent, not 0
    assert set(edges[(5, 9)]) == {"y", "all"}
    assert edges[(5, 9)]["y"] == pytest.approx(0.4)
    assert edges[(5, 9)]["all"] == pytest.approx(0.4)
    assert set(edges[(9, 12)]) == {"z", "all"}
    assert edges[(9, 12)]["z"] == pytest.approx(0.75)
    assert all(isinstance(n, int) for n in rag.nodes)


def test_agglomerate_pools_contacts_of_several_offsets(tmp_path):
    # 1 fills the top-left 2 x 2 corner of a 3 x 3 block of 2: two contacts
    # along each offset, 0.1 along (1, 0) and 0.7 along (0, 1)
    frags = np.full((3, 3), 2, dtype=np.uint64)
    frags[:2, :2] = 1
    affs = np.zeros((2, 3, 3), dtype=np.float32)
    affs[0, 1, :2] = 0.1
    affs[1, :2, 1] = 0.7
    frags[2, 0] = 0  # one contact fewer along (1, 0): pooled, not averaged
    task = agglom_task(tmp_path, {"aff": NEIGHBORHOOD_2D})
    rag = nx.Graph()
    task.agglomerate(affs, frags, rag)
    assert edges_of(rag)[(1, 2)]["aff"] == pytest.approx((0.1 + 0.7 + 0.7) / 3)


def test_agglomerate_keeps_large_ids_and_leaves_frags_alone(tmp_path):
    big = 2**62 + 3
    frags = np.full((4, 4), big + 5, dtype=np.uint64)
    frags[:2] = big
    before = frags.copy()
    affs = np.full((2, 4, 4), 0.25, dtype=np.float32)
    task = agglom_task(tmp_path, {"aff": [(1, 0)]})
    rag = nx.Graph()
    rag.add_edge(big, big + 5, aff=0.9, other=1)  # updated, not replaced
    task.agglomerate(affs, frags, rag)
    assert edges_of(rag) == {(big, big + 5): {"aff": pytest.approx(0.25), "other": 1}}
    np.testing.assert_array_equal(frags, before)
    rag = nx.Graph()
    task.agglomerate(affs, np.zeros((4, 4), np.uint64), rag)
    assert rag.number_of_edges() == 0


def test_agglomerate_gives_the_scores_the_task_writes(tmp_path):
    rng = np.random.default_rng(3)
    frags = rng.integers(1, 5, (6, 6)).astype(np.uint64)
    affs = rng.random((2, 6, 6)).astype(np.float32)
    task = agglom_task(tmp_path, {"aff": NEIGHBORHOOD_2D}, affs)
    write_array(tmp_path / "d.zarr/frags", frags, voxel_size=(1, 1), offset=(0, 0))
    task.db.init()
    db = task.db.open("r+")
    graph = nx.Graph()
    for fragment in range(1, 5):
        graph.add_node(fragment, position=(1.0, 1.0), size=1)
    db.write_graph(graph)
    db.close()
    task.run_blockwise(multiprocessing=False)

    rag = nx.Graph()
    task.agglomerate(affs, frags, rag)
    stored = edges_of(task.db.open("r").read_graph())
    assert set(stored) == set(edges_of(rag))
    for pair, data in edges_of(rag).items():
        assert stored[pair]["aff"] == pytest.approx(data["aff"])


# -------------------------------------------------------- ComputeShift.compute_shift


def textured(shape, seed=0) -> np.ndarray:
    from scipy import ndimage

    noise = np.random.default_rng(seed).random(shape)
    return ndimage.gaussian_filter(noise, 1.5).astype(np.float32)


def crop(image: np.ndarray, shape, at) -> np.ndarray:
    return image[tuple(slice(a, a + s) for a, s in zip(at, shape, strict=True))]


def test_compute_shift_measures_each_channel_in_world_units():
    texture = textured((24, 32, 32))
    reference = crop(texture, (16, 24, 24), (4, 4, 4))
    # what the moving image shows at x, the reference shows at x + (2, 1, -3)
    moved = crop(texture, (16, 24, 24), (6, 5, 1))
    image = np.stack([reference, moved, reference])
    shift = ComputeShift.compute_shift(image, reference, np.array([4, 2, 1]))
    assert shift.shape == (3, 3, 1, 1, 1) and shift.dtype == np.float64
    np.testing.assert_allclose(shift[0].ravel(), 0, atol=0.1)
    np.testing.assert_allclose(shift[1].ravel(), [2 * 4, 1 * 2, -3 * 1], atol=0.1)
    np.testing.assert_allclose(shift[2].ravel(), 0, atol=0.1)
    # a target with a channel axis of one, as volara 1.0.5 accepted it
    np.testing.assert_array_equal(
        ComputeShift.compute_shift(image, reference[None], [4, 2, 1]), shift
    )


def test_compute_shift_with_a_mask():
    texture = textured((16, 24, 24), seed=1)
    reference = crop(texture, (12, 20, 20), (2, 2, 2))
    moved = crop(texture, (12, 20, 20), (2, 0, 3))
    mask = np.zeros(reference.shape, np.uint8)
    mask[2:10, 4:16, 4:16] = 1
    image = np.stack([moved])
    shift = ComputeShift.compute_shift(image, reference, [1, 1, 1], mask, 0.5)
    np.testing.assert_allclose(shift.ravel(), [0, -2, 1], atol=0.01)
    empty = ComputeShift.compute_shift(image, reference, [1, 1, 1], 0 * mask)
    assert empty.shape == (1, 3, 1, 1, 1) and not empty.any()
    with pytest.raises(ValueError, match="target_data has shape"):
        ComputeShift.compute_shift(image, reference[:5], [1, 1, 1])


def test_compute_shift_gives_what_the_task_writes(tmp_path):
    reference = textured((8, 16, 16), seed=2)
    image = np.stack([reference, np.roll(reference, (1, -2, 0), axis=(0, 1, 2))])
    write_array(tmp_path / "d.zarr/raw", image, voxel_size=(2, 1, 1))
    task = ComputeShift(
        intensities=Raw(store=tmp_path / "d.zarr/raw"),
        shifts=Raw(store=tmp_path / "d.zarr/shifts"),
        block_size=(8, 16, 16),
        context=(0, 0, 0),
    )
    task.run_blockwise(multiprocessing=False)
    written = task.shifts.array("r")[:]
    expected = ComputeShift.compute_shift(image, image[0], np.array([2, 1, 1]))
    np.testing.assert_allclose(written, expected.astype(np.float32))


# ------------------------------------------------- SeededExtractFrags skeleton ids

QUADRANTS = np.zeros((12, 12), dtype=np.uint64)
QUADRANTS[:6, :6], QUADRANTS[:6, 6:] = 1, 2
QUADRANTS[6:, :6], QUADRANTS[6:, 6:] = 3, 4
CENTER = {1: (2.5, 2.5), 2: (2.5, 8.5), 3: (8.5, 2.5), 4: (8.5, 8.5)}
"""World position (voxel size 1) inside each quadrant."""


def skeleton_db(tmp_path, nodes, edges=(), with_ids=True) -> SQLite:
    """``nodes``: {node: (position, skeleton_id or None)}."""
    db = SQLite(
        path=tmp_path / "skeletons.db",
        ndim=2,
        node_attrs={"skeleton_id": "int"} if with_ids else None,
    )
    db.init()
    graph = nx.Graph()
    for node, (position, skeleton_id) in nodes.items():
        attrs = {"skeleton_id": skeleton_id} if with_ids else {}
        graph.add_node(node, position=position, size=1, **attrs)
    graph.add_edges_from(edges)
    provider = db.open("r+")
    provider.write_graph(graph)
    provider.close()
    return db


def seeded_task(tmp_path, db, **kwargs) -> SeededExtractFrags:
    affs = affinities_from_labels(QUADRANTS, NEIGHBORHOOD_2D)
    write_array(
        tmp_path / "d.zarr/affs",
        affs,
        voxel_size=(1, 1),
        offset=(0, 0),
        attrs={"neighborhood": [list(o) for o in NEIGHBORHOOD_2D]},
    )
    return SeededExtractFrags(
        affs_data=Affs(store=tmp_path / "d.zarr/affs"),
        segs_data=Labels(store=tmp_path / "d.zarr/segs"),
        graph_db=db,
        bias=[-0.5, -0.5],
        block_size=(6, 12),
        context=(2, 2),
        **kwargs,
    )


def segment_of_each_quadrant(task) -> dict[int, int]:
    segments = task.segs_data.array("r")[:]
    labels = {}
    for quadrant in range(1, 5):
        values = np.unique(segments[QUADRANTS == quadrant])
        assert values.size == 1, (quadrant, values)
        labels[quadrant] = int(values[0])
    return labels


def test_seeds_keep_their_skeleton_ids_with_two_workers(tmp_path):
    big = 2**62 + 7  # above 32 bits (SQLite stores up to 2**63 - 1)
    db = skeleton_db(
        tmp_path,
        {1: (CENTER[1], 100), 2: (CENTER[4], 200), 3: (CENTER[2], big)},
    )
    task = seeded_task(tmp_path, db, num_workers=2)
    state = task.run_blockwise(multiprocessing=True)[task.task_name]
    assert state.completed_count == state.total_block_count == 2
    assert segment_of_each_quadrant(task) == {1: 100, 2: big, 3: 0, 4: 200}


def test_components_sharing_an_id_become_one_segment(tmp_path):
    # two unconnected pieces of skeleton 7 (one per block), and one of 9
    db = skeleton_db(
        tmp_path,
        {1: (CENTER[1], 7), 2: (CENTER[3], 7), 3: (CENTER[2], 9)},
    )
    task = seeded_task(tmp_path, db)
    task.run_blockwise(multiprocessing=False)
    assert segment_of_each_quadrant(task) == {1: 7, 2: 9, 3: 7, 4: 0}


def test_a_component_with_several_ids_keeps_each_nodes_id(tmp_path, caplog):
    # one component whose edge crosses from quadrant 1 (id 100) into
    # quadrant 2 (id 200): each node keeps its id, the edge is not painted
    # (painted, it would carry one label into the other quadrant)
    db = skeleton_db(
        tmp_path,
        {1: (CENTER[1], 100), 2: (CENTER[2], 200)},
        edges=[(1, 2)],
    )
    task = seeded_task(tmp_path, db)
    with caplog.at_level(logging.WARNING, logger="volara"):
        task.run_blockwise(multiprocessing=False)
    assert segment_of_each_quadrant(task) == {1: 100, 2: 200, 3: 0, 4: 0}
    assert "different skeleton_id" in caplog.text


def test_nodes_without_ids_take_their_components_id_or_a_new_one(tmp_path):
    db = skeleton_db(
        tmp_path,
        {
            1: (CENTER[1], 50),
            # joined to node 1: takes 50 (another label would split quadrant 1)
            2: ((4.5, 4.5), None),
            3: (CENTER[2], None),  # alone without id: 50 + 1
            4: (CENTER[4], 0),  # 0 is no id either: 50 + 2
        },
        edges=[(1, 2)],
    )
    task = seeded_task(tmp_path, db)
    task.run_blockwise(multiprocessing=False)
    assert segment_of_each_quadrant(task) == {1: 50, 2: 51, 3: 0, 4: 52}


def test_without_skeleton_ids_components_are_numbered(tmp_path):
    db = skeleton_db(
        tmp_path,
        {5: (CENTER[4], None), 3: (CENTER[1], None), 4: ((4.5, 0.5), None)},
        edges=[(3, 4)],
        with_ids=False,
    )
    task = seeded_task(tmp_path, db)
    task.run_blockwise(multiprocessing=False)
    # by smallest node id: {3, 4} is 1, {5} is 2
    assert segment_of_each_quadrant(task) == {1: 1, 2: 0, 3: 0, 4: 2}


def test_a_skeleton_id_that_is_no_label_is_refused(tmp_path):
    db = skeleton_db(tmp_path, {1: (CENTER[1], -3)})
    task = seeded_task(tmp_path, db)
    task.init()
    roi = Roi((0, 0), (12, 12))
    block = daisy.Block(total_roi=roi, read_roi=roi, write_roi=roi, block_id=0)
    with task.process_block_func() as process_block:
        with pytest.raises(ValueError, match=r"node 1 has skeleton_id -3"):
            process_block(block)


def test_skeleton_labels_by_hand():
    nodes = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    edges = [(1, 2), (2, 3), (4, 5), (6, 7), (7, 8)]
    ids = {1: 100, 4: 100, 6: 300, 8: 200}
    assert skeleton_labels(nodes, edges, ids) == {
        1: 100, 2: 100, 3: 100,  # one id in the component
        4: 100, 5: 100,  # another component with the same id
        6: 300, 8: 200, 7: 301,  # several ids: the id-less node gets a new one
        9: 302,  # no id at all
    }  # fmt: skip
    assert skeleton_labels([7, 2, 9], [(7, 9)], {}) == {2: 1, 7: 2, 9: 2}
