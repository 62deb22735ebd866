"""Synthetic sample volumes: layout, determinism, affinities that match the
labels, and the settings that make them harder (neurites, membrane width,
blur, uint8 affinities)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy.ndimage import gaussian_filter
from skimage.measure import label, regionprops

from volara.datasets import Affs
from volara.kernels.affinities import affinities_from_labels
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
        (dict(voxel_size=(0, 4, 4)), "voxel_size"),
        (dict(blur=-1.0), "blur"),
        (dict(blur=(1.0, 1.0)), "blur"),
        (dict(objects="axons"), "objects must be 'cells' or 'neurites'"),
        (dict(membrane_width=-1), "membrane_width"),
        (dict(membrane_width=1.5), "membrane_width"),
        (
            dict(membranes=True, membrane_width=2),
            "membranes=True and membrane_width=2 disagree",
        ),
        (
            dict(affs_dtype="float16"),
            "affs_dtype must be 'float32', 'uint8' or 'float64'",
        ),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        small(tmp_path / "s.zarr", **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(objects="neurites"),
        dict(objects="neurites", membrane_width=2, blur=1.0),
        dict(membrane_width=3),
        dict(affs_dtype="uint8", blur=(0.0, 1.0, 1.0)),
    ],
)
def test_new_settings_layout_and_determinism(tmp_path, kwargs):
    a = small(tmp_path / "a.zarr", seed=3, raw=True, **kwargs)
    b = small(tmp_path / "b.zarr", seed=3, raw=True, **kwargs)
    c = small(tmp_path / "c.zarr", seed=4, raw=True, **kwargs)
    labels, affs = a.labels.array(), a.affinities.array()
    assert labels.dtype == np.uint64 and labels.shape == SHAPE
    assert affs.shape == (len(DEFAULT_NEIGHBORHOOD), *SHAPE)
    assert affs.dtype == np.dtype(kwargs.get("affs_dtype", "float32"))
    assert tuple(affs.voxel_size) == VOXEL_SIZE
    for name in ("labels", "affinities", "raw"):
        first = getattr(a, name).array()[:]
        np.testing.assert_array_equal(first, getattr(b, name).array()[:])
        assert not np.array_equal(first, getattr(c, name).array()[:])


def test_membranes_true_is_membrane_width_one(tmp_path):
    old = small(tmp_path / "old.zarr", membranes=True)
    new = small(tmp_path / "new.zarr", membrane_width=1)
    both = small(tmp_path / "both.zarr", membranes=True, membrane_width=1)
    for data in (new, both):
        np.testing.assert_array_equal(old.labels.array()[:], data.labels.array()[:])
        np.testing.assert_array_equal(
            old.affinities.array()[:], data.affinities.array()[:]
        )


def principal_axis_ratios(labels: np.ndarray, voxel_size) -> np.ndarray:
    """Longest over shortest principal axis (world units) of each object of
    at least 100 voxels."""
    ratios = []
    for region in regionprops(labels.astype(np.int64), spacing=voxel_size):
        if region.area >= 100:
            eigenvalues = np.sort(region.inertia_tensor_eigvals)
            ratios.append(np.sqrt(eigenvalues[-1] / max(eigenvalues[0], 1e-9)))
    return np.array(ratios)


def test_neurites_are_thin_tubes_along_z_that_fill_the_volume(tmp_path):
    # 30 neurites in 48 x 48 pixels: about sqrt(48 * 48 / 30) = 9 voxels across
    args = dict(shape=(16, 48, 48), num_cells=30, seed=0)
    cells = small(tmp_path / "cells.zarr", **args).labels.array()[:]
    neurites = small(tmp_path / "n.zarr", objects="neurites", **args)
    labels = neurites.labels.array()[:]
    assert not (labels == 0).any()
    ids = np.unique(labels)
    # every object is one connected piece (face neighbors)
    assert label(labels, connectivity=1).max() == ids.size
    # in-plane: a few voxels across
    areas = np.bincount(labels[8].ravel())
    diameters = 2 * np.sqrt(areas[areas > 0] / np.pi)
    assert 5 <= np.median(diameters) <= 12
    # along z: most voxels are in objects that run through every section
    through = [i for i in ids if np.all(np.any(labels == i, axis=(1, 2)))]
    assert np.isin(labels, through).mean() > 0.7
    # elongated in world units; measured on seeds 0-4: cells' median ratio
    # 1.4-1.5 (largest 1.9-2.7), neurites' median 12-14, 84-100% of them
    # more elongated than every cell
    cell_ratios = principal_axis_ratios(cells, VOXEL_SIZE)
    neurite_ratios = principal_axis_ratios(labels, VOXEL_SIZE)
    assert np.median(neurite_ratios) > 4 * np.median(cell_ratios)
    assert (neurite_ratios > cell_ratios.max()).mean() > 0.75


def test_neurite_thickness_is_in_world_units(tmp_path):
    # y voxels twice as large as x voxels: a round profile spans half as
    # many voxels along y as along x
    data = small(
        tmp_path / "s.zarr",
        shape=(16, 24, 48),
        voxel_size=(40, 8, 4),
        num_cells=30,
        objects="neurites",
    )
    section = data.labels.array()[:][8].astype(np.int64)
    extents = np.array(
        [
            (r.bbox[2] - r.bbox[0], r.bbox[3] - r.bbox[1])
            for r in regionprops(section)
            if r.area >= 10 and min(r.bbox[:2]) > 0 and r.bbox[2:] < (24, 48)
        ]
    )
    assert len(extents) >= 10
    y_over_x = extents[:, 0].mean() / extents[:, 1].mean()
    assert 0.35 < y_over_x < 0.7


def zero_runs(lines: np.ndarray) -> list[int]:
    """Lengths of the runs of 0 along the last axis that lie between two
    different objects."""
    runs = []
    for line in lines.reshape(-1, lines.shape[-1]):
        nonzero = np.flatnonzero(line)
        for before, after in zip(nonzero[:-1], nonzero[1:], strict=True):
            if after > before + 1 and line[before] != line[after]:
                runs.append(int(after - before - 1))
    return runs


def assert_objects_apart(labels: np.ndarray, axis: int, distance: int) -> None:
    """Along ``axis``, voxels of two different objects are more than
    ``distance`` voxels apart."""
    moved = np.moveaxis(labels, axis, -1)
    for step in range(1, distance + 1):
        here, there = moved[..., :-step], moved[..., step:]
        both = (here != 0) & (there != 0)
        assert np.array_equal(here[both], there[both]), (axis, step)


@pytest.mark.parametrize("objects", ["cells", "neurites"])
@pytest.mark.parametrize("width", [1, 2, 3])
def test_membrane_width_separates_objects_by_that_many_voxels(tmp_path, objects, width):
    args = dict(shape=(8, 48, 48), num_cells=20, objects=objects)
    touching = small(tmp_path / "t.zarr", **args).labels.array()[:]
    data = small(tmp_path / "m.zarr", membrane_width=width, **args)
    labels = data.labels.array()[:]
    assert not (touching == 0).any()
    assert 0.05 < (labels == 0).mean() < 0.6
    # in-plane `width` voxels of background, along z (10x coarser) one section
    for axis, distance in [(0, 1), (1, width), (2, width)]:
        assert_objects_apart(labels, axis, distance)


@pytest.mark.parametrize("objects", ["cells", "neurites"])
@pytest.mark.parametrize("width", [1, 2, 3])
def test_membrane_width_is_exact_across_a_boundary(tmp_path, objects, width):
    # one section, so no seam comes from the next one: where a boundary
    # crosses x at right angles, the seam along x is exactly `width` voxels,
    # the most common length; diagonal boundaries give longer runs
    args = dict(shape=(1, 64, 64), num_cells=20, objects=objects)
    data = small(tmp_path / "s.zarr", membrane_width=width, **args)
    runs = np.bincount(zero_runs(data.labels.array()[:]))
    assert runs.argmax() == width
    assert runs[width] > 0.4 * runs.sum()


def test_membrane_width_applies_to_every_axis_of_isotropic_voxels(tmp_path):
    data = small(
        tmp_path / "s.zarr", shape=(24, 24, 24), voxel_size=(8, 8, 8), membrane_width=2
    )
    labels = data.labels.array()[:]
    for axis in range(3):
        assert_objects_apart(labels, axis, 2)


def test_uint8_affinities_are_the_rounded_float_affinities(tmp_path):
    args = dict(objects="neurites", membrane_width=1, noise=0.3, blur=1.0, seed=2)
    floats = small(tmp_path / "f.zarr", **args).affinities.array()[:]
    uint8 = small(tmp_path / "u.zarr", affs_dtype="uint8", **args)
    values = uint8.affinities.array()[:]
    assert values.dtype == np.uint8
    np.testing.assert_array_equal(values, np.round(floats * 255).astype(np.uint8))
    # a fresh Affs reads them with their neighborhood, like the float ones
    reopened = Affs(store=tmp_path / "u.zarr" / "affinities")
    assert [tuple(o) for o in reopened.neighborhood] == DEFAULT_NEIGHBORHOOD


def test_float64_affinities_have_no_two_equal_values(tmp_path):
    args = dict(noise=0.3, seed=4)
    floats = small(tmp_path / "f.zarr", **args).affinities.array()[:]
    assert np.unique(floats).size < floats.size / 2  # clipped: many ties
    untied = small(tmp_path / "t.zarr", affs_dtype="float64", **args)
    values = untied.affinities.array()[:]
    assert values.dtype == np.float64
    assert np.unique(values).size == values.size
    assert values.min() >= 0 and values.max() <= 1
    # the float32 run's values, squeezed and jittered by at most 0.01
    np.testing.assert_allclose(values, 0.01 + 0.98 * floats, atol=0.01)
    again = small(tmp_path / "again.zarr", affs_dtype="float64", **args)
    np.testing.assert_array_equal(again.affinities.array()[:], values)


def test_blur_is_a_gaussian_of_the_affinities_per_spatial_axis(tmp_path):
    neighborhood = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 8, 0)]
    args = dict(noise=0.0, neighborhood=neighborhood, membrane_width=1)
    labels = small(tmp_path / "l.zarr", **args).labels.array()[:]
    exact = affinities_from_labels(labels, neighborhood)
    for name, blur in [("one", 1.0), ("each", (0.0, 1.5, 0.5))]:
        sigmas = np.broadcast_to(blur, 3)
        values = small(tmp_path / f"{name}.zarr", blur=blur, **args)
        values = values.affinities.array()[:]
        for channel in range(len(neighborhood)):
            expected = gaussian_filter(exact[channel], sigmas)
            np.testing.assert_allclose(values[channel], expected, atol=1e-6)
        # smooth: boundaries become grey, no longer 0 or 1
        grey = (values > 0.05) & (values < 0.95)
        assert grey.mean() > 0.05
    # one sigma is that sigma on every axis; 0 is no blur
    one = small(tmp_path / "one.zarr", blur=1.0, **args).affinities.array()[:]
    every = small(tmp_path / "every.zarr", blur=(1, 1, 1), **args)
    np.testing.assert_array_equal(one, every.affinities.array()[:])
    none = small(tmp_path / "none.zarr", blur=(0, 0, 0), **args)
    np.testing.assert_array_equal(none.affinities.array()[:], exact)
