"""Synthetic sample volumes: layout, determinism, and affinities that match
the labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from volara.datasets import Affs
from volara.kernels.synthetic import add_membranes, random_cells
from volara.sample_data import DEFAULT_NEIGHBORHOOD, generate_sample_data

SHAPE = (8, 32, 32)
VOXEL_SIZE = (40, 4, 4)


def small(path: Path, **kwargs):
    args = dict(shape=SHAPE, voxel_size=VOXEL_SIZE, num_cells=10)
    args.update(kwargs)
    return generate_sample_data(path, **args)


def test_layout_of_the_written_arrays(tmp_path):
    data = small(tmp_path / "s.zarr", raw=True)
    labels = data.labels.array()
    affs = data.affinities.array()
    assert labels.dtype == np.uint64 and labels.shape == SHAPE
    assert tuple(labels.voxel_size) == VOXEL_SIZE and tuple(labels.offset) == (0, 0, 0)
    assert affs.dtype == np.float32
    assert affs.shape == (len(DEFAULT_NEIGHBORHOOD), *SHAPE)
    assert tuple(affs.voxel_size) == VOXEL_SIZE
    values = affs[:]
    assert values.min() >= 0.0 and values.max() <= 1.0
    # a fresh Affs finds the neighborhood in the array's attributes
    reopened = Affs(store=tmp_path / "s.zarr" / "affinities")
    assert [tuple(o) for o in reopened.neighborhood] == DEFAULT_NEIGHBORHOOD
    stored = zarr.open(str(tmp_path / "s.zarr" / "affinities"), mode="r").attrs
    assert [tuple(o) for o in stored["neighborhood"]] == DEFAULT_NEIGHBORHOOD
    assert data.raw is not None and data.raw.array().dtype == np.uint8


def test_same_seed_same_bytes_other_seed_other_cells(tmp_path):
    a, b = small(tmp_path / "a.zarr", seed=4), small(tmp_path / "b.zarr", seed=4)
    c = small(tmp_path / "c.zarr", seed=5)
    np.testing.assert_array_equal(a.labels.array()[:], b.labels.array()[:])
    np.testing.assert_array_equal(a.affinities.array()[:], b.affinities.array()[:])
    assert not np.array_equal(a.labels.array()[:], c.labels.array()[:])


def test_noise_free_affinities_are_the_label_affinities(tmp_path):
    neighborhood = [(1, 0, 0), (0, -1, 0), (0, 0, 3)]
    data = small(tmp_path / "s.zarr", noise=0.0, neighborhood=neighborhood)
    labels = data.labels.array()[:]
    affs = data.affinities.array()[:]
    # checked pair by pair with plain loops, independent of the kernel
    rng = np.random.default_rng(0)
    for _ in range(2000):
        channel = int(rng.integers(len(neighborhood)))
        voxel = tuple(int(rng.integers(s)) for s in SHAPE)
        other = tuple(v + o for v, o in zip(voxel, neighborhood[channel], strict=True))
        inside = all(0 <= o < s for o, s in zip(other, SHAPE, strict=True))
        same = inside and labels[voxel] == labels[other] != 0
        assert affs[(channel, *voxel)] == float(same)


def test_noise_perturbs_but_keeps_the_boundaries(tmp_path):
    clean = small(tmp_path / "clean.zarr", noise=0.0).affinities.array()[:]
    noisy = small(tmp_path / "noisy.zarr", noise=0.15).affinities.array()[:]
    assert not np.array_equal(clean, noisy)
    # gaussian noise of sd 0.15, clipped: mean distance about 0.06
    assert 0.02 < np.abs(clean - noisy).mean() < 0.12
    assert ((noisy > 0.5) == (clean > 0.5)).mean() > 0.99


def test_cells_are_irregular_and_fill_the_volume(tmp_path):
    labels = small(tmp_path / "s.zarr", num_cells=20).labels.array()[:]
    ids = np.unique(labels)
    assert 0 not in ids
    assert 15 <= ids.size <= 20
    # boundaries are bent: no cell is a box (its bounding box has other cells)
    boxy = 0
    for cell in ids:
        where = np.nonzero(labels == cell)
        box = tuple(slice(w.min(), w.max() + 1) for w in where)
        boxy += bool(np.all(labels[box] == cell))
    assert boxy == 0


def test_membranes_separate_every_pair_of_cells():
    labels = add_membranes(
        random_cells((6, 20, 20), VOXEL_SIZE, 8, np.random.default_rng(1))
    )
    assert (labels == 0).any()
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        here, there = a[:-1], a[1:]
        touching = (here != 0) & (there != 0)
        assert np.all(here[touching] == there[touching])


def test_raw_is_darker_on_cell_boundaries(tmp_path):
    data = small(tmp_path / "s.zarr", raw=True, noise=0.0)
    labels, raw = data.labels.array()[:], data.raw.array()[:]
    inner = np.ones(labels.shape, dtype=bool)
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        edge = np.zeros(a.shape, dtype=bool)
        edge[:-1] |= a[:-1] != a[1:]
        edge[1:] |= a[:-1] != a[1:]
        inner &= ~np.moveaxis(edge, 0, axis)
    assert raw[~inner].mean() < raw[inner].mean() - 30


def test_rewriting_the_same_layout_overwrites(tmp_path):
    first = small(tmp_path / "s.zarr", seed=1).labels.array()[:]
    second = small(tmp_path / "s.zarr", seed=2).labels.array()[:]
    fresh = small(tmp_path / "fresh.zarr", seed=2).labels.array()[:]
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(second, fresh)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(voxel_size=(4, 4)), "voxel_size"),
        (dict(neighborhood=[(1, 0)]), "neighborhood"),
        (dict(neighborhood=[]), "neighborhood"),
        (dict(noise=-0.1), "noise"),
        (dict(num_cells=0), "num_cells"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        small(tmp_path / "s.zarr", **kwargs)
