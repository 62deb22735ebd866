"""The numba mutex watershed (`volara.kernels.mws`) against mwatershed, and
its tie order: by position in the volume, the same in a crop as in the
whole volume."""

from __future__ import annotations

import mwatershed
import numpy as np
import pytest

from volara.kernels.affinities import affinities_from_labels
from volara.kernels.mws import _run, agglom, buffers_kept
from volara.kernels.synthetic import noisy_affinities, random_cells
from volara.sample_data import DEFAULT_NEIGHBORHOOD


def reference(weights, offsets, seeds=None, strides=None):
    """mwatershed's output on the same arguments (float64, uint64 seeds)."""
    return np.asarray(
        mwatershed.agglom(
            np.asarray(weights, dtype=np.float64),
            [[int(o) for o in offset] for offset in offsets],
            seeds=None if seeds is None else np.asarray(seeds, dtype=np.uint64),
            strides=None
            if strides is None
            else [[int(s) for s in stride] for stride in strides],
        ),
        dtype=np.uint64,
    )


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label arrays group the voxels alike (ids aside)."""
    if a.shape != b.shape:
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1).shape[1]
    return pairs == np.unique(a).size == np.unique(b).size


def random_case(rng: np.random.Generator):
    ndim = int(rng.integers(1, 4))
    shape = tuple(int(s) for s in rng.integers(3, 8, size=ndim))
    channels = int(rng.integers(2, 10))
    offsets = [
        tuple(int(o) for o in rng.integers(-3, 4, size=ndim)) for _ in range(channels)
    ]
    weights = rng.uniform(-1, 1, size=(channels, *shape))
    # mostly repulsive volumes leave voxels that no attractive edge touches
    weights -= rng.uniform(0, 0.6)
    weights[rng.random(weights.shape) < 0.05] = 0.0  # w == 0: repulsive, last
    seeds = None
    if rng.random() < 0.4:
        seeds = np.zeros(shape, dtype=np.uint64)
        count = int(rng.integers(1, 7))
        where = rng.integers(0, seeds.size, size=count)
        # few values: a seed on several voxels, some of them with only
        # repulsive edges (they still belong to the seed's cluster)
        values = 4 if rng.random() < 0.5 else 2 * seeds.size
        seeds.ravel()[where] = rng.integers(1, values, size=count)
    strides = None
    if rng.random() < 0.3:
        strides = [
            tuple(int(s) for s in rng.integers(1, 4, size=ndim))
            for _ in range(channels)
        ]
    return weights, offsets, seeds, strides


@pytest.mark.parametrize("batch", range(8))
def test_tiny_volumes_equal_mwatershed(batch):
    """Tie-free float64 weights: the very same array as mwatershed (ids of
    unseeded clusters, seeds kept, 0 where no attractive edge), 1D to 3D,
    negative offsets, seeds, strides."""
    rng = np.random.default_rng(1000 + batch)
    seen = {"zeros": 0, "seeded": 0, "strided": 0, "2d": 0, "3d": 0}
    for _ in range(50):
        weights, offsets, seeds, strides = random_case(rng)
        ours = agglom(weights, offsets, seeds=seeds, strides=strides)
        theirs = reference(weights, offsets, seeds, strides)
        assert ours.dtype == np.uint64
        np.testing.assert_array_equal(ours, theirs)
        seen["zeros"] += bool((theirs == 0).any())
        seen["seeded"] += seeds is not None
        seen["strided"] += strides is not None
        seen["2d"] += weights.ndim == 3
        seen["3d"] += weights.ndim == 4
    assert min(seen.values()) > 0, seen


def block_weights(shape=(20, 80, 80), seed=0, levels=None, noise=0.15):
    """Weights of the volara default neighborhood: generated affinities plus
    the yardstick's bias (float32)."""
    rng = np.random.default_rng(seed)
    labels = random_cells(shape, (40, 4, 4), max(2, shape[0] * 2), rng)
    affs = noisy_affinities(
        affinities_from_labels(labels, DEFAULT_NEIGHBORHOOD), noise, rng
    )
    if levels is not None:
        affs = np.rint(affs * levels).astype(np.float32) / np.float32(levels)
    bias = np.array([-0.4] * 3 + [-0.7] * 6, dtype=np.float32)
    return (affs + bias.reshape(-1, 1, 1, 1)).astype(np.float32)


def test_block_equals_mwatershed():
    """A whole block of generated affinities (tie-free by a tiny float64
    jitter), with and without seeds: mwatershed's very array."""
    weights = block_weights().astype(np.float64)
    rng = np.random.default_rng(5)
    weights += rng.uniform(-1e-6, 1e-6, size=weights.shape)
    ours = agglom(weights, DEFAULT_NEIGHBORHOOD)
    np.testing.assert_array_equal(ours, reference(weights, DEFAULT_NEIGHBORHOOD))
    assert np.unique(ours).size > 20
    seeds = np.zeros(weights.shape[1:], dtype=np.uint64)
    grid = seeds[::5, ::20, ::20]
    grid[...] = np.arange(1, grid.size + 1).reshape(grid.shape)
    seeds[0, :3, :3] = 7  # one seed on several voxels
    ours = agglom(weights, DEFAULT_NEIGHBORHOOD, seeds=seeds)
    theirs = reference(weights, DEFAULT_NEIGHBORHOOD, seeds)
    np.testing.assert_array_equal(ours, theirs)


def test_many_refused_merges_equal_mwatershed(monkeypatch):
    """Random weights, mostly repulsive, with long-range offsets: thousands
    of merges are refused, so the pairs found refused outgrow their first
    table and are carried into larger ones. mwatershed's very array."""
    from volara.kernels import mws

    rebuilds = []
    live_pairs = mws._live_pairs

    def counted(table, parent):
        rebuilds.append(table.size)
        return live_pairs(table, parent)

    monkeypatch.setattr(mws, "_live_pairs", counted)
    offsets = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (2, 0, 0), (0, 4, 0), (0, 0, 4)]
    offsets += [(3, 0, 0), (0, 7, 0), (0, 0, 7)]
    weights = np.random.default_rng(1).uniform(-0.6, 0.4, (9, 16, 48, 48))
    ours = agglom(weights, offsets)
    assert len(rebuilds) >= 2
    np.testing.assert_array_equal(ours, reference(weights, offsets))


def test_kept_buffers_give_what_fresh_ones_give():
    """Inside `buffers_kept` the kernel reuses its arrays from call to call
    (larger and smaller volumes alternating, seeds, a table that grows):
    every result equals the one of a call with fresh arrays."""
    rng = np.random.default_rng(77)
    cases = [random_case(rng) for _ in range(40)]
    block = block_weights()
    cases[10:10] = [(block, DEFAULT_NEIGHBORHOOD, None, None)]
    cases[25:25] = [(block[:, :5, :30, :30], DEFAULT_NEIGHBORHOOD, None, None)]
    fresh = [agglom(w, o, seeds=s, strides=st) for w, o, s, st in cases]
    with buffers_kept():
        kept = [agglom(w, o, seeds=s, strides=st) for w, o, s, st in cases]
    for ours, theirs in zip(kept, fresh, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert np.unique(kept[10]).size > 20


CROP_OFFSETS = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (2, 0, 0), (0, -4, 0), (0, 0, 4)]
CROP_BIAS = np.array([-0.5, -0.5, -0.5, -0.7, -0.7, -0.7], dtype=np.float32)
REGION = (slice(2, 10), slice(5, 33), slice(7, 30))


def tied_weights(kind: str) -> np.ndarray:
    """Weights with many exactly equal ``|w|``: affinities rounded to
    1/255 or clipped to 0/1."""
    rng = np.random.default_rng(11)
    labels = random_cells((12, 40, 40), (40, 4, 4), 30, rng)
    affs = affinities_from_labels(labels, CROP_OFFSETS)
    if kind == "rounded":
        affs = noisy_affinities(affs, 0.3, rng)
        affs = np.rint(affs * 255).astype(np.float32) / np.float32(255)
    else:
        affs = (noisy_affinities(affs, 0.5, rng) > 0.5).astype(np.float32)
    return (affs + CROP_BIAS.reshape(-1, 1, 1, 1)).astype(np.float32)


def embedded(weights: np.ndarray, start: tuple[int, ...], shape: tuple[int, ...]):
    """An array of ``shape`` whose first voxel is ``start`` in the volume of
    ``weights``: the edges with both ends in `REGION` carry the volume's
    weights, every other edge is strongly repulsive (so it merges nothing
    and keeps nothing apart that could merge)."""
    out = np.full((weights.shape[0], *shape), -10.0, dtype=weights.dtype)
    for c, offset in enumerate(CROP_OFFSETS):
        # voxels p of the region whose p + offset is in the region too
        lows = [max(r.start, r.start - o) for r, o in zip(REGION, offset, strict=True)]
        highs = [min(r.stop, r.stop - o) for r, o in zip(REGION, offset, strict=True)]
        source: tuple[int | slice, ...] = (c,) + tuple(
            slice(lo, hi) for lo, hi in zip(lows, highs, strict=True)
        )
        target: tuple[int | slice, ...] = (c,) + tuple(
            slice(lo - s, hi - s) for lo, hi, s in zip(lows, highs, start, strict=True)
        )
        out[target] = weights[source]
    return out


def region_labels(weights, start, shape, **options):
    labels = _run(
        embedded(weights, start, shape), CROP_OFFSETS, origin=start, **options
    )
    inside = tuple(
        slice(r.start - s, r.stop - s) for r, s in zip(REGION, start, strict=True)
    )
    return labels[inside]


# (first voxel, shape) of arrays around REGION: the whole volume, the region
# with a margin of one voxel before it, and boxes with other margins. (The
# array's first voxel stays outside the region: as in mwatershed, its
# cluster's id would be its index, 0, the id of the unclustered voxels.)
EXTENTS = [
    ((0, 0, 0), (12, 40, 40)),
    ((1, 4, 6), (9, 29, 24)),
    ((1, 3, 2), (11, 33, 31)),
    ((2, 0, 6), (9, 40, 30)),
]


@pytest.mark.parametrize("kind", ["rounded", "clipped"])
def test_tie_order_is_the_same_in_every_extent(kind):
    weights = tied_weights(kind)
    whole = region_labels(weights, *EXTENTS[0])
    assert np.unique(whole).size > 5
    for start, shape in EXTENTS[1:]:
        labels = region_labels(weights, start, shape)
        assert same_partition(labels, whole), (start, shape)
        np.testing.assert_array_equal(labels == 0, whole == 0)
    # another tie order (channels taken in the reverse order) gives another
    # result on these weights, so the comparison above can fail
    start, shape = EXTENTS[0]
    reverse = _run(
        embedded(weights, start, shape)[::-1].copy(),
        CROP_OFFSETS[::-1],
        origin=start,
    )
    assert not same_partition(reverse[REGION], whole)


@pytest.mark.parametrize("levels", [None, 255])
def test_float32_and_float64_agree(levels):
    """The same values as float32 (one sort key) and as float64 (two sort
    passes over the full 64-bit key) give the very same array."""
    weights = block_weights(shape=(10, 48, 48), seed=3, levels=levels)
    narrow = agglom(weights, DEFAULT_NEIGHBORHOOD, origin=(4, 0, 9))
    wide = _run(weights.astype(np.float64), DEFAULT_NEIGHBORHOOD, origin=(4, 0, 9))
    np.testing.assert_array_equal(narrow, wide)
    # float64 values that are float32 values take the float32 path
    shortcut = agglom(
        weights.astype(np.float64), DEFAULT_NEIGHBORHOOD, origin=(4, 0, 9)
    )
    np.testing.assert_array_equal(narrow, shortcut)


def test_randomized_strides_are_deterministic_and_positional():
    weights = block_weights(shape=(10, 40, 40), seed=4)
    strides = [(1, 1, 1)] * 3 + [(2, 1, 1), (1, 2, 2), (1, 2, 2)] * 2
    first = agglom(
        weights, DEFAULT_NEIGHBORHOOD, strides=strides, randomized_strides=True
    )
    again = agglom(
        weights, DEFAULT_NEIGHBORHOOD, strides=strides, randomized_strides=True
    )
    np.testing.assert_array_equal(first, again)
    plain = agglom(weights, DEFAULT_NEIGHBORHOOD)
    assert not same_partition(first, plain)
    # with unit strides every edge is kept
    ones = [(1, 1, 1)] * len(DEFAULT_NEIGHBORHOOD)
    np.testing.assert_array_equal(
        agglom(weights, DEFAULT_NEIGHBORHOOD, strides=ones, randomized_strides=True),
        plain,
    )


def test_strides_count_from_the_global_coordinate():
    """A stride keeps the same edges of a volume whatever the array's
    origin: shifting the array by a multiple of the stride changes nothing,
    and at origin zeros the rule is mwatershed's."""
    rng = np.random.default_rng(8)
    offsets = [(1, 0), (0, -1), (2, 3)]
    strides = [(2, 1), (1, 3), (2, 2)]
    weights = rng.uniform(-1, 1, size=(3, 9, 10))
    base = agglom(weights, offsets, strides=strides)
    np.testing.assert_array_equal(base, reference(weights, offsets, strides=strides))
    assert same_partition(
        base, agglom(weights, offsets, strides=strides, origin=(6, 12))
    )
    assert not same_partition(
        base, agglom(weights, offsets, strides=strides, origin=(1, 1))
    )


def test_errors():
    with pytest.raises(ValueError, match="NaN"):
        agglom(np.full((1, 3, 3), np.nan), [(0, 1)])
    with pytest.raises(ValueError, match="offsets"):
        agglom(np.zeros((2, 3, 3)), [(0, 1)])
    with pytest.raises(ValueError, match="seeds"):
        agglom(np.zeros((1, 3, 3)), [(0, 1)], seeds=np.zeros((3, 4), dtype=np.uint64))
