"""The fast paths behind the benchmarks give exactly what the plain ones do:
direct zarr block reads (`read_region`) and the contact-counting table of
`mean_affinities`."""

from __future__ import annotations

import numpy as np
import pytest
from funlib.geometry import Roi

from conftest import write_array
from volara.datasets import ChunkCache, Labels, Raw, read_region, write_region
from volara.kernels import agglomeration
from volara.kernels.agglomeration import dense_labels, mean_affinities

VOXEL_SIZE = (2, 3, 1)
OFFSET = (4, 6, 2)


@pytest.fixture
def channel_array(tmp_path):
    data = np.arange(2 * 5 * 6 * 7, dtype=np.float32).reshape(2, 5, 6, 7)
    write_array(
        tmp_path / "data.zarr/affs",
        data,
        voxel_size=VOXEL_SIZE,
        offset=OFFSET,
        chunk_shape=(2, 2, 4, 3),
    )
    return Labels(store=tmp_path / "data.zarr/affs").array("r"), data


@pytest.mark.parametrize(
    "begin, shape",
    [
        ((4, 6, 2), (10, 18, 7)),  # the whole array
        ((6, 9, 3), (4, 6, 3)),  # inside, across chunks
        ((0, 0, 0), (8, 12, 4)),  # sticks out before the start
        ((10, 18, 6), (6, 12, 6)),  # sticks out past the end
        ((40, 40, 40), (2, 3, 1)),  # entirely outside
    ],
)
def test_read_region_equals_to_ndarray(channel_array, begin, shape):
    array, _ = channel_array
    roi = Roi(begin, shape)
    direct = read_region(array, roi, fill_value=-1)
    expected = array.to_ndarray(roi, fill_value=-1)
    assert direct.dtype == expected.dtype
    assert (
        direct.shape
        == expected.shape
        == (2, *(s // v for s, v in zip(shape, VOXEL_SIZE, strict=True)))
    )
    np.testing.assert_array_equal(direct, expected)


ROIS = [
    ((4, 6, 2), (10, 18, 7)),
    ((6, 9, 3), (4, 6, 3)),
    ((0, 0, 0), (8, 12, 4)),
    ((10, 18, 6), (6, 12, 6)),
    ((40, 40, 40), (2, 3, 1)),
]


@pytest.mark.parametrize("channels_per_chunk", [2, 1])
@pytest.mark.parametrize("max_bytes", [2**20, 200])
def test_read_region_with_kept_chunks_equals_to_ndarray(
    tmp_path, channels_per_chunk, max_bytes
):
    """Reads through one `ChunkCache`, region after region (overlapping,
    sticking out, chunks split along the channels, a cache too small for
    more than a chunk or two): what funlib reads."""
    data = np.arange(2 * 5 * 6 * 7, dtype=np.float32).reshape(2, 5, 6, 7)
    chunk_shape = (channels_per_chunk, 2, 4, 3)
    store = tmp_path / "data.zarr/affs"
    write_array(store, data, VOXEL_SIZE, OFFSET, chunk_shape)
    array = Labels(store=store).array("r")
    cache = ChunkCache(max_bytes)
    for begin, shape in ROIS + ROIS[::-1]:
        roi = Roi(begin, shape)
        kept = read_region(array, roi, fill_value=-1, cache=cache)
        np.testing.assert_array_equal(kept, array.to_ndarray(roi, fill_value=-1))
        assert cache.nbytes <= max_bytes


def test_kept_chunks_are_decoded_once(channel_array):
    array, data = channel_array
    cache = ChunkCache()
    roi = Roi((6, 9, 3), (4, 6, 3))
    read_region(array, roi, cache=cache)
    first = cache.decoded
    assert first == 2 * 1 * 2  # voxels z 1-2, y 1-2, x 1-3 in chunks (2, 4, 3)
    again = read_region(array, roi, cache=cache)
    assert cache.decoded == first
    np.testing.assert_array_equal(again, data[:, 1:3, 1:3, 1:4])


def test_inputs_written_upstream_or_of_unknown_origin_are_not_kept(tmp_path):
    """In a pipeline, AffAgglom keeps the chunks of the affinities (nothing
    writes them) but not of the fragments ExtractFrags writes while it
    runs; a cluster worker, which loads the task from its config file,
    keeps none, since it cannot tell."""
    from volara.blockwise import AffAgglom, ExtractFrags
    from volara.blockwise.registry import load_task, task_config
    from volara.datasets import Affs
    from volara.dbs import SQLite
    from volara.sample_data import generate_sample_data

    generate_sample_data(tmp_path / "data.zarr", shape=(8, 16, 16), num_cells=3)
    affs = Affs(store=tmp_path / "data.zarr/affinities")
    fragments = Labels(store=tmp_path / "out.zarr/fragments")
    shared = dict(
        db=SQLite(path=tmp_path / "g.sqlite"),
        affs_data=affs,
        frags_data=fragments,
        block_size=(4, 8, 8),
        context=(2, 2, 2),
    )
    extract = ExtractFrags(bias=[-0.5] * len(affs.neighborhood or []), **shared)
    agglom = AffAgglom(scores={"adj": [(1, 0, 0)]}, **shared)
    pipeline = extract + agglom
    pipeline._tell_tasks_their_upstream_outputs()
    fragments.prepare(
        (8, 16, 16), (4, 8, 8), (0, 0, 0), (1, 1, 1), None, None, None, np.uint64
    )
    assert isinstance(agglom.chunk_cache(affs), ChunkCache)
    assert agglom.chunk_cache(fragments) is None
    assert isinstance(extract.chunk_cache(affs), ChunkCache)
    in_cluster_worker = load_task(task_config(agglom))
    in_cluster_worker.mark_upstream_unknown()
    assert in_cluster_worker.chunk_cache(affs) is None


def test_read_region_values_by_hand(channel_array):
    array, data = channel_array
    # voxel (1, 1, 1) of the array starts at world (6, 9, 3)
    block = read_region(array, Roi((6, 9, 3), (2, 3, 2)))
    np.testing.assert_array_equal(block, data[:, 1:2, 1:2, 1:3])
    padded = read_region(array, Roi((2, 6, 2), (4, 3, 1)), fill_value=7)
    assert padded[:, 0].tolist() == [[[7]], [[7]]]
    np.testing.assert_array_equal(padded[:, 1], data[:, 0, :1, :1])


def test_read_region_applies_lazy_operations(tmp_path):
    data = np.arange(3 * 4 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4, 4)
    write_array(tmp_path / "raw.zarr/raw", data)
    raw = Raw(store=tmp_path / "raw.zarr/raw", channels=[2], scale_shift=(0.5, 1.0))
    array = raw.array("r")
    block = read_region(array, Roi((1, 1, 1), (2, 2, 2)))
    np.testing.assert_allclose(block, data[[2], 1:3, 1:3, 1:3] * 0.5 + 1.0)


def test_write_region_writes_where_funlib_would(tmp_path):
    data = np.zeros((2, 5, 6, 7), dtype=np.uint16)
    write_array(tmp_path / "a.zarr/x", data, voxel_size=VOXEL_SIZE, offset=OFFSET)
    write_array(tmp_path / "b.zarr/x", data, voxel_size=VOXEL_SIZE, offset=OFFSET)
    direct = Labels(store=tmp_path / "a.zarr/x").array("r+")
    plain = Labels(store=tmp_path / "b.zarr/x").array("r+")
    roi = Roi((6, 9, 3), (4, 6, 3))
    values = np.arange(2 * 2 * 2 * 3, dtype=np.uint16).reshape(2, 2, 2, 3) + 1
    write_region(direct, roi, values)
    plain[roi] = values
    np.testing.assert_array_equal(direct[direct.roi], plain[plain.roi])
    np.testing.assert_array_equal(direct[direct.roi][:, 1:3, 1:3, 1:4], values)
    with pytest.raises(IndexError):
        write_region(direct, Roi((0, 0, 0), (2, 3, 1)), values[:, :1, :1, :1])


def test_dense_labels():
    fragments = np.array([[[9, 9, 0, 4], [4, 4, 2**40, 0]]], dtype=np.uint64)
    ids, dense = dense_labels(fragments)
    assert ids.tolist() == [0, 4, 9, 2**40]
    assert dense.tolist() == [[[2, 2, 0, 1], [1, 1, 3, 0]]]
    ids, dense = dense_labels(np.full((2, 2), 5, dtype=np.uint64))
    assert ids.tolist() == [0, 5] and dense.tolist() == [[1, 1], [1, 1]]


def _brute_force_means(fragments, affinities, neighborhood, groups):
    """Per pair and group, the mean by plain loops."""
    sums: dict = {}
    for channel, offset in enumerate(neighborhood):
        for index in np.ndindex(fragments.shape):
            other = tuple(i + o for i, o in zip(index, offset, strict=True))
            if not all(0 <= o < s for o, s in zip(other, fragments.shape, strict=True)):
                continue
            a, b = int(fragments[index]), int(fragments[other])
            if a == 0 or b == 0 or a == b:
                continue
            for name, offsets in groups.items():
                if tuple(offset) in [tuple(o) for o in offsets]:
                    entry = sums.setdefault((min(a, b), max(a, b), name), [0.0, 0])
                    entry[0] += float(affinities[(channel, *index)])
                    entry[1] += 1
    return {key: total / count for key, (total, count) in sums.items()}


@pytest.mark.parametrize("table_limit", [agglomeration.BINCOUNT_MAX_PAIRS, 0])
def test_mean_affinities_table_and_sort_agree_with_loops(monkeypatch, table_limit):
    # table_limit 0 forces the sorting path meant for blocks of many fragments
    monkeypatch.setattr(agglomeration, "BINCOUNT_MAX_PAIRS", table_limit)
    rng = np.random.default_rng(3)
    neighborhood = [(0, 0, 1), (0, 1, 0), (1, 0, 0), (0, -2, 1)]
    groups = {"short": neighborhood[:3], "far": neighborhood[3:]}
    fragments = rng.choice([0, 3, 8, 2**35, 77], size=(3, 5, 6)).astype(np.uint64)
    affinities = rng.random((4, 3, 5, 6)).astype(np.float32)
    u, v, means = mean_affinities(fragments, affinities, neighborhood, groups)
    expected = _brute_force_means(fragments, affinities, neighborhood, groups)
    pairs = sorted({(a, b) for a, b, _ in expected})
    assert list(zip(u.tolist(), v.tolist(), strict=True)) == pairs
    for i, (a, b) in enumerate(pairs):
        for name in groups:
            if (a, b, name) in expected:
                assert means[name][i] == pytest.approx(expected[(a, b, name)])
            else:
                assert np.isnan(means[name][i])


def test_mean_affinities_without_fragments():
    u, v, means = mean_affinities(
        np.zeros((2, 2, 2), dtype=np.uint64),
        np.ones((1, 2, 2, 2)),
        [(0, 0, 1)],
        {"a": [(0, 0, 1)]},
    )
    assert u.size == v.size == means["a"].size == 0
    assert u.dtype == np.uint64


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "uint8", "uint16"])
def test_weights_without_options_are_the_plain_sum_to_the_bit(dtype):
    """Edge weights of affinities without mask, noise, smoothing or decay
    (one pass) equal the general path's ``(0 + bias) + affinity`` in its
    precision, to the bit: the order of nearly equal edges depends on it."""
    from volara.kernels.mutex_watershed import _edge_weights, affinities_as_float

    rng = np.random.default_rng(3)
    raw = rng.uniform(0, 1, size=(3, 4, 5, 6))
    if np.issubdtype(np.dtype(dtype), np.integer):
        affs = (raw * np.iinfo(dtype).max).astype(dtype)
    else:
        affs = raw.astype(dtype)
    bias = [-0.4, -0.7, -0.55]
    neighborhood = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    values = affinities_as_float(affs)
    column = np.asarray(bias, dtype=values.dtype).reshape(-1, 1, 1, 1)
    expected = np.zeros_like(values)
    expected += column
    expected += values
    if np.issubdtype(affs.dtype, np.integer):
        expected = expected.astype(np.float32)
    weights = _edge_weights(affs, neighborhood, bias, None, None, None, 0)
    assert weights.dtype == expected.dtype
    assert weights.tobytes() == expected.tobytes()
