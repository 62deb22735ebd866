"""ExtractFrags on generated cells: fragments in the zarr and nodes in the DB
agree, blocks are independent but consistent, reruns change nothing, and bad
input is refused before any block runs."""

from __future__ import annotations

from pathlib import Path

import mwatershed
import numpy as np
import pytest
from funlib.geometry import Roi
from skimage.measure import label
from skimage.metrics import adapted_rand_error

from conftest import write_array
from volara.blockwise import extract_frags as extract_frags_module
from volara.blockwise.extract_frags import ExtractFrags
from volara.datasets import Affs, Labels, Raw
from volara.dbs import SQLite
from volara.kernels.mutex_watershed import mutex_watershed_clusters
from volara.sample_data import generate_sample_data

SHAPE = (16, 64, 64)
VOXEL_SIZE = (40, 4, 4)
OFFSET = (80, 20, 12)
BLOCK = (8, 32, 32)
CONTEXT = (2, 8, 8)
NEIGHBORHOOD = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (2, 0, 0), (0, 4, 0), (0, 0, 4)]
BIAS = [-0.4, -0.4, -0.4, -0.6, -0.6, -0.6]


def sample(tmp_path: Path, noise=0.3, blur=1.0, seed=0):
    return generate_sample_data(
        tmp_path / "data.zarr",
        shape=SHAPE,
        voxel_size=VOXEL_SIZE,
        num_cells=12,
        neighborhood=NEIGHBORHOOD,
        noise=noise,
        blur=blur,
        seed=seed,
        offset=OFFSET,
        chunk_shape=BLOCK,
    )


def make_task(tmp_path: Path, affs: Affs, name="frags", db=None, **kwargs):
    args = dict(
        db=db if db is not None else SQLite(path=tmp_path / f"{name}.db"),
        affs_data=affs,
        frags_data=Labels(store=tmp_path / "data.zarr" / name),
        bias=BIAS,
        block_size=BLOCK,
        context=CONTEXT,
    )
    args.update(kwargs)
    return ExtractFrags(**args)


def read_nodes(task: ExtractFrags) -> dict[int, dict]:
    db = task.db.open("r")
    try:
        return {node["id"]: node for node in db.read_nodes()}
    finally:
        db.close()


def per_fragment(fragments: np.ndarray):
    """Ids, voxel counts, mean voxel index and index bounding box of every
    non-zero id, from one sort of the volume (independent of the kernels)."""
    flat = fragments.ravel()
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ids = ordered[starts]
    counts = np.diff(np.r_[starts, flat.size])
    coords = np.stack(np.unravel_index(order, fragments.shape), axis=1)
    means = np.add.reduceat(coords, starts) / counts[:, None]
    lows = np.minimum.reduceat(coords, starts)
    highs = np.maximum.reduceat(coords, starts)
    keep = ids != 0
    return ids[keep], counts[keep], means[keep], lows[keep], highs[keep]


def check_nodes_match_fragments(task: ExtractFrags) -> tuple[np.ndarray, dict]:
    fragments = task.frags_data.array()[:]
    nodes = read_nodes(task)
    ids, counts, means, lows, highs = per_fragment(fragments)
    assert sorted(nodes) == sorted(int(i) for i in ids)  # one node per id, no other
    voxel_size, offset = np.array(VOXEL_SIZE), np.array(OFFSET)
    for fragment, count, mean, low, high in zip(
        ids, counts, means, lows, highs, strict=True
    ):
        node = nodes[int(fragment)]
        position = np.array(node["position"])
        assert node["size"] == count
        assert not node["filtered"]
        assert np.all(position >= offset + low * voxel_size)
        assert np.all(position <= offset + (high + 1) * voxel_size)
        # PostgreSQL stores positions as REAL (float32)
        np.testing.assert_allclose(
            position, offset + (mean + 0.5) * voxel_size, rtol=1e-6
        )
        # ids are unique across blocks: every id stays inside one block
        np.testing.assert_array_equal(low // BLOCK, high // BLOCK)
    return fragments, nodes


def test_parallel_run_writes_one_node_per_fragment(tmp_path):
    data = sample(tmp_path)
    task = make_task(tmp_path, data.affinities, num_workers=2)
    states = task.run_blockwise(multiprocessing=True)
    state = states[task.task_name]
    assert state.total_block_count == 8 and state.completed_count == 8
    assert state.failed_count == 0
    fragments, nodes = check_nodes_match_fragments(task)
    array = task.frags_data.array()
    assert array.dtype == np.uint64 and tuple(array.offset) == OFFSET
    assert len(nodes) > 100  # noisy affinities: many fragments per cell

    serial = make_task(tmp_path, data.affinities, name="serial")
    serial.run_blockwise(multiprocessing=False)
    # same blocks, same seeded noise, same ids: identical results
    np.testing.assert_array_equal(serial.frags_data.array()[:], fragments)
    assert read_nodes(serial) == nodes


def test_rerun_skips_blocks_and_gives_identical_output(tmp_path):
    data = sample(tmp_path)
    task = make_task(tmp_path, data.affinities)
    task.run_blockwise(multiprocessing=False)
    fragments, nodes = task.frags_data.array()[:], read_nodes(task)

    state = task.run_blockwise(multiprocessing=False)[task.task_name]
    assert state.skipped_count == state.total_block_count == 8
    np.testing.assert_array_equal(task.frags_data.array()[:], fragments)
    assert read_nodes(task) == nodes


def test_retried_blocks_replace_their_nodes_without_duplicates(tmp_path):
    data = sample(tmp_path)
    task = make_task(tmp_path, data.affinities)
    task.run_blockwise(multiprocessing=False)
    fragments, nodes = task.frags_data.array()[:], read_nodes(task)
    # a stale node from an interrupted earlier attempt, inside the first block
    db = task.db.open("r+")
    stale = {"position": (100.0, 30.0, 20.0), "size": 1, "filtered": False}
    db.write_nodes({10**9: stale})
    db.close()

    # forget which blocks are done: every block runs again
    task.drop(drop_outputs=False)
    state = task.run_blockwise(multiprocessing=False)[task.task_name]
    assert state.completed_count == 8
    np.testing.assert_array_equal(task.frags_data.array()[:], fragments)
    assert read_nodes(task) == nodes


def cut_at_block_faces(labels: np.ndarray) -> np.ndarray:
    """``labels`` split wherever they cross a block face."""
    index = np.indices(labels.shape)
    block = np.zeros(labels.shape, dtype=np.uint64)
    for axis, size in enumerate(BLOCK):
        block = block * 100 + (index[axis] // size).astype(np.uint64)
    cut = labels.astype(np.uint64) * 1000 + block
    # consecutive ids: skimage's metrics allocate by the largest id
    return np.unique(cut, return_inverse=True)[1].reshape(labels.shape)


def rand_error(truth: np.ndarray, fragments: np.ndarray) -> float:
    compact = np.unique(fragments, return_inverse=True)[1]
    return float(adapted_rand_error(truth.ravel(), compact.ravel())[0])


def test_blockwise_with_context_agrees_with_one_block(tmp_path):
    data = sample(tmp_path)
    whole = make_task(tmp_path, data.affinities, name="whole", block_size=SHAPE)
    whole.run_blockwise(multiprocessing=False)
    with_context = make_task(tmp_path, data.affinities, name="ctx")
    with_context.run_blockwise(multiprocessing=False)
    without = make_task(tmp_path, data.affinities, name="noctx", context=(0, 0, 0))
    without.run_blockwise(multiprocessing=False)

    reference = cut_at_block_faces(whole.frags_data.array()[:]).ravel()
    error_with = adapted_rand_error(
        reference, with_context.frags_data.array()[:].ravel()
    )[0]
    error_without = adapted_rand_error(
        reference, without.frags_data.array()[:].ravel()
    )[0]
    # Blocks only see their context, so fragments near block faces may differ
    # from a run over the whole volume. Measured on this data (seeds 0-3):
    # adapted Rand error 0.001-0.004 with context (2, 8, 8), 0.034-0.055
    # without. 0.01 leaves room for platform differences while still failing
    # if the context were ignored.
    assert error_with < 0.01
    assert error_without > 2 * error_with


def test_clean_affinities_give_the_cells_cut_at_block_faces(tmp_path):
    data = sample(tmp_path, noise=0.0, blur=0.0)
    task = make_task(tmp_path, data.affinities)
    task.run_blockwise(multiprocessing=False)
    truth = cut_at_block_faces(data.labels.array()[:]).ravel()
    error = rand_error(truth, task.frags_data.array()[:])
    # the generator can leave a few single-voxel islands of a cell, which
    # become fragments of their own; nothing else may differ (measured for
    # seeds 0-3: 0 to 6e-4)
    assert error < 1e-3


def watershed_clusters_of_blocks(affs: np.ndarray):
    """For every block of the test layout: its slices and, per voxel of the
    block, the size (voxels) and mean direct-neighbor affinity of its
    mutex-watershed cluster over the block plus context (zero-padded past
    the volume), and whether it is in a cluster at all. The clusters come
    from the watershed alone (`raw_block_clusters`), not from ExtractFrags'
    filters and pieces."""
    shape, block = np.array(SHAPE), np.array(BLOCK)
    for start in np.ndindex(*(shape // block)):
        begin = np.array(start) * block
        read, raw = raw_block_clusters(affs, begin)
        ids, inverse, sizes = np.unique(raw, return_inverse=True, return_counts=True)
        means = np.bincount(inverse.ravel(), read[:3].mean(axis=0).ravel()) / sizes
        inner = tuple(map(slice, CONTEXT, CONTEXT + block))
        index = inverse.reshape(raw.shape)[inner]
        where = tuple(map(slice, begin, begin + block))
        yield where, sizes[index], means[index], raw[inner] != 0


def raw_block_clusters(affs: np.ndarray, begin) -> tuple[np.ndarray, np.ndarray]:
    """The affinities a block starting at voxel ``begin`` reads (its
    context zero-padded past the volume) and the mutex watershed's raw
    cluster ids on them (0: no attractive edge), ties taken by the block's
    global position as in ExtractFrags."""
    padded = np.pad(affs, [(0, 0)] + [(c, c) for c in CONTEXT])
    size = np.array(BLOCK) + 2 * np.array(CONTEXT)
    read = padded[(slice(None), *map(slice, begin, begin + size))]
    origin = np.array(OFFSET) // VOXEL_SIZE + begin - CONTEXT
    return read, mutex_watershed_clusters(read, NEIGHBORHOOD, BIAS, origin=origin)


def test_every_fragment_is_one_connected_piece_of_its_block(tmp_path):
    data = sample(tmp_path)
    affs = data.affinities.array()[:]
    task = make_task(tmp_path, data.affinities)
    task.run_blockwise(multiprocessing=False)
    fragments, nodes = check_nodes_match_fragments(task)
    clusters = 0
    for where, _, _, clustered in watershed_clusters_of_blocks(affs):
        block = fragments[where]
        pieces = label(block, background=0, connectivity=block.ndim)
        # as many pieces as ids: no id has two pieces, no piece two ids
        pairs = np.unique(np.stack([block.ravel(), pieces.ravel()]), axis=1)
        assert pairs.shape[1] == len(np.unique(block)) == len(np.unique(pieces))
        np.testing.assert_array_equal(block != 0, clustered)
        clusters += len(np.unique(watershed_ids_in_block(affs, where)))
    # on this data, clusters that only the context holds together are
    # common: the blocks have more fragments than clusters
    assert len(nodes) > clusters


def watershed_ids_in_block(affs: np.ndarray, where: tuple[slice, ...]) -> np.ndarray:
    """The watershed's raw cluster ids (0 left out) inside one block,
    computed on the block plus context."""
    _, raw = raw_block_clusters(affs, np.array([w.start for w in where]))
    inner = raw[tuple(slice(c, c + b) for c, b in zip(CONTEXT, BLOCK, strict=True))]
    return inner[inner != 0]


def test_voxels_without_attractive_affinity_get_no_fragment(tmp_path):
    # cells in a background of affinity 0 (as in volara 1.0.5's tutorial):
    # the background is no fragment, in any block
    labels = np.zeros(SHAPE, dtype=np.uint64)
    labels[2:14, 8:28, 8:28] = 1
    labels[2:14, 36:56, 30:60] = 2
    affs = np.zeros((len(NEIGHBORHOOD), *SHAPE), dtype=np.float32)
    for channel, offset in enumerate(NEIGHBORHOOD):
        shifted = np.roll(labels, [-o for o in offset], axis=(0, 1, 2))
        affs[channel] = (labels == shifted) & (labels != 0)
    write_array(
        tmp_path / "data.zarr/affs",
        affs,
        voxel_size=VOXEL_SIZE,
        offset=OFFSET,
        attrs={"neighborhood": [list(o) for o in NEIGHBORHOOD]},
    )
    task = make_task(tmp_path, Affs(store=tmp_path / "data.zarr/affs"), num_workers=2)
    task.run_blockwise()
    fragments, nodes = check_nodes_match_fragments(task)
    np.testing.assert_array_equal(fragments == 0, labels == 0)
    # one fragment per cell and block it crosses: cell 1 lies in 2 blocks
    # (split in z), cell 2 in 4
    assert len(nodes) == 6


def test_filters_measure_fragments_over_block_and_context(tmp_path):
    data = sample(tmp_path)
    affs = data.affinities.array()[:]
    plain = make_task(tmp_path, data.affinities, name="plain")
    plain.run_blockwise(multiprocessing=False)
    debris = make_task(tmp_path, data.affinities, name="debris", remove_debris=40)
    debris.run_blockwise(multiprocessing=False)
    weak = make_task(tmp_path, data.affinities, name="weak", filter_fragments=0.5)
    weak.run_blockwise(multiprocessing=False)
    before = plain.frags_data.array()[:]
    kept_large = debris.frags_data.array()[:]
    kept_strong = weak.frags_data.array()[:]

    for where, sizes, means, clustered in watershed_clusters_of_blocks(affs):
        np.testing.assert_array_equal(before[where] != 0, clustered)
        np.testing.assert_array_equal(kept_large[where] != 0, clustered & (sizes >= 40))
        np.testing.assert_array_equal(
            kept_strong[where] != 0, clustered & (means >= 0.5)
        )
    # the fragments that stay are the unfiltered ones, ids and all
    for kept in (kept_large, kept_strong):
        assert 0 < (kept != 0).sum() < (before != 0).sum()
        np.testing.assert_array_equal(kept[kept != 0], before[kept != 0])
    # a fragment cut small by a block face survives: its cluster is large
    _, counts, *_ = per_fragment(kept_large)
    assert counts.min() < 40
    check_nodes_match_fragments(debris)
    check_nodes_match_fragments(weak)


def test_mask_clears_fragments_outside(tmp_path):
    data = sample(tmp_path)
    mask = np.ones(SHAPE, dtype=np.uint8)
    mask[:, :, :20] = 0
    write_array(tmp_path / "data.zarr" / "mask", mask, VOXEL_SIZE, OFFSET)
    task = make_task(
        tmp_path, data.affinities, mask_data=Raw(store=tmp_path / "data.zarr" / "mask")
    )
    task.run_blockwise(multiprocessing=False)
    fragments, _ = check_nodes_match_fragments(task)
    assert np.all(fragments[:, :, :20] == 0)
    assert np.all(fragments[:, :, 20:] != 0)


def test_uint8_affinities_work_like_float(tmp_path):
    data = sample(tmp_path, noise=0.0, blur=0.0)
    affs = (data.affinities.array()[:] * 255).astype(np.uint8)
    write_array(
        tmp_path / "data.zarr" / "affs8",
        affs,
        VOXEL_SIZE,
        OFFSET,
        attrs={"neighborhood": [list(o) for o in NEIGHBORHOOD]},
    )
    as_float = make_task(tmp_path, data.affinities, name="float")
    as_float.run_blockwise(multiprocessing=False)
    as_uint8 = make_task(
        tmp_path, Affs(store=tmp_path / "data.zarr" / "affs8"), name="uint8"
    )
    as_uint8.run_blockwise(multiprocessing=False)
    np.testing.assert_array_equal(
        as_uint8.frags_data.array()[:], as_float.frags_data.array()[:]
    )


def test_json_round_trip(tmp_path):
    data = sample(tmp_path)
    task = make_task(
        tmp_path,
        data.affinities,
        strides=[(1, 1, 1)] * 3 + [(2, 2, 2)] * 3,
        sigma=(0, 1, 1),
        noise_eps=0.01,
    )
    again = ExtractFrags.model_validate_json(task.model_dump_json())
    assert again == task
    assert task.task_name == "frags-extract-frags"
    assert tuple(task.context_voxels) == CONTEXT


# --------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(bias=[-0.5] * 5), ["bias", "5", "6"]),
        (dict(strides=[(1, 1, 1)] * 4), ["strides", "4", "6"]),
        (dict(strides=[(1, 1)] * 6), ["strides", "3 values"]),
        (dict(sigma=(1, 1)), ["sigma", "3"]),
        (dict(db=SQLite(path=Path("x.db"), ndim=2)), ["db", "ndim"]),
    ],
)
def test_inconsistent_parameters_are_refused_at_construction(tmp_path, kwargs, words):
    data = sample(tmp_path)
    with pytest.raises(ValueError) as error:
        make_task(tmp_path, data.affinities, **kwargs)
    for word in words:
        assert word in str(error.value)


def assert_refused_before_any_block(task: ExtractFrags, words: list[str]) -> None:
    with pytest.raises(ValueError) as error:
        task.run_blockwise(multiprocessing=False)
    for word in words:
        assert word in str(error.value)
    assert not Path(task.frags_data.store).exists()
    assert not task.block_ds.exists()


def test_nan_affinities_are_refused_before_any_block(tmp_path):
    data = sample(tmp_path)
    affs = data.affinities.array()[:]
    affs[2, 9, 40, 40] = np.nan
    write_array(
        tmp_path / "data.zarr" / "nan",
        affs,
        VOXEL_SIZE,
        OFFSET,
        attrs={"neighborhood": [list(o) for o in NEIGHBORHOOD]},
    )
    task = make_task(tmp_path, Affs(store=tmp_path / "data.zarr" / "nan"))
    assert_refused_before_any_block(task, ["affs_data", "NaN", "1 NaN"])


def test_nan_in_an_array_too_large_to_scan_fails_its_block(tmp_path, monkeypatch):
    # above NAN_SCAN_MAX_BYTES the up-front scan is skipped; the block that
    # reads the NaN fails with a message naming the field and its region
    monkeypatch.setattr(extract_frags_module, "NAN_SCAN_MAX_BYTES", 0)
    data = sample(tmp_path)
    affs = data.affinities.array()[:]
    affs[0, 12, 50, 50] = np.nan
    write_array(
        tmp_path / "data.zarr" / "nan",
        affs,
        VOXEL_SIZE,
        OFFSET,
        attrs={"neighborhood": [list(o) for o in NEIGHBORHOOD]},
    )
    task = make_task(
        tmp_path, Affs(store=tmp_path / "data.zarr" / "nan"), max_retries=0
    )
    # serial runs re-raise a block's error (parallel runs report the block
    # as failed and log the same message)
    with pytest.raises(ValueError, match=r"affs_data: .* has NaN affinities in \["):
        task.run_blockwise(multiprocessing=False)


def test_channel_count_mismatch_is_refused_before_any_block(tmp_path):
    data = sample(tmp_path)
    write_array(
        tmp_path / "data.zarr" / "three",
        data.affinities.array()[:][:3],
        VOXEL_SIZE,
        OFFSET,
        attrs={"neighborhood": [list(o) for o in NEIGHBORHOOD]},
    )
    task = make_task(tmp_path, Affs(store=tmp_path / "data.zarr" / "three"))
    assert_refused_before_any_block(task, ["affs_data", "(3, 16, 64, 64)", "6 offsets"])


def test_mask_with_another_voxel_size_is_refused_before_any_block(tmp_path):
    data = sample(tmp_path)
    write_array(
        tmp_path / "data.zarr" / "mask",
        np.ones((16, 32, 32), np.uint8),
        (40, 8, 8),
        (0, 0, 0),
    )
    task = make_task(
        tmp_path, data.affinities, mask_data=Raw(store=tmp_path / "data.zarr" / "mask")
    )
    assert_refused_before_any_block(task, ["mask_data", "voxel size"])


def test_affinities_without_neighborhood_are_refused(tmp_path):
    write_array(tmp_path / "bare", np.ones((3, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="neighborhood"):
        Affs(store=tmp_path / "bare")


# --------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_postgresql_nodes_with_two_workers_and_retried_blocks(tmp_path, postgres):
    data = sample(tmp_path)
    task = make_task(tmp_path, data.affinities, db=postgres, num_workers=2)
    state = task.run_blockwise(multiprocessing=True)[task.task_name]
    assert state.completed_count == 8
    fragments, nodes = check_nodes_match_fragments(task)

    # rerunning every block must neither fail on duplicate ids (COPY) nor
    # duplicate or lose nodes
    db = task.db.open("r+")
    db.write_nodes(
        {10**9: {"position": (100.0, 30.0, 20.0), "size": 1, "filtered": False}}
    )
    db.close()
    task.drop(drop_outputs=False)
    state = task.run_blockwise(multiprocessing=False)[task.task_name]
    assert state.completed_count == 8 and state.failed_count == 0
    np.testing.assert_array_equal(task.frags_data.array()[:], fragments)
    assert read_nodes(task) == nodes
    assert set(nodes) == set(read_nodes(task)) and len(nodes) == len(
        np.unique(fragments)
    )


def test_nodes_lie_in_their_blocks(tmp_path):
    data = sample(tmp_path)
    task = make_task(tmp_path, data.affinities)
    task.run_blockwise(multiprocessing=False)
    db = task.db.open("r")
    try:
        block = Roi(OFFSET, np.array(BLOCK) * VOXEL_SIZE)
        in_block = db.read_nodes(block)
    finally:
        db.close()
    fragments = task.frags_data.array()[block]
    assert sorted(n["id"] for n in in_block) == sorted(np.unique(fragments).tolist())


def test_tied_affinities_are_taken_in_an_order_fixed_by_global_position(tmp_path):
    from volara.kernels.mutex_watershed import connected_pieces, extract_fragments

    # no blur: a third of the affinities are clipped to exactly 0 or 1
    data = sample(tmp_path, noise=0.3, blur=0.0, seed=3)
    affs = data.affinities.array("r")[:]
    origin = tuple(o // v for o, v in zip(OFFSET, VOXEL_SIZE, strict=True))
    expected = extract_fragments(affs, NEIGHBORHOOD, BIAS, origin=origin)
    # mwatershed takes the ties in another order: the order matters here
    weights = affs.astype(np.float64) + np.reshape(BIAS, (-1, 1, 1, 1))
    theirs = mwatershed.agglom(weights, [list(o) for o in NEIGHBORHOOD])
    assert adapted_rand_error(connected_pieces(theirs), expected)[0] > 0
    task = make_task(tmp_path, data.affinities, block_size=SHAPE, context=(0, 0, 0))
    task.run_blockwise(multiprocessing=False)
    fragments = task.frags_data.array("r")[:]
    assert adapted_rand_error(expected, fragments)[0] == 0
