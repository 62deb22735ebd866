"""volara 1.0.5's ExtractFrags methods that scripts call on one region:
compute_fragments, get_fragments, filter_avg_fragments, fragment_centers."""

from __future__ import annotations

import mwatershed
import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from volara.blockwise import ExtractFrags
from volara.datasets import Labels
from volara.dbs import SQLite
from volara.sample_data import generate_sample_data

NEIGHBORHOOD = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (2, 0, 0), (0, 4, 0), (0, 0, 4)]
BIAS = [-0.4, -0.4, -0.4, -0.6, -0.6, -0.6]


@pytest.fixture
def task_and_affs(tmp_path):
    data = generate_sample_data(
        tmp_path / "d.zarr",
        shape=(8, 40, 40),
        num_cells=6,
        noise=0.2,
        blur=1.0,
        neighborhood=NEIGHBORHOOD,
        seed=1,
        # no two equal affinities: which of two equal edges comes first is
        # up to the implementation, and this compares with mwatershed
        affs_dtype="float64",
    )

    def make(**options) -> ExtractFrags:
        return ExtractFrags(
            db=SQLite(path=tmp_path / "g.db"),
            affs_data=data.affinities,
            frags_data=Labels(store=tmp_path / "d.zarr/frags"),
            block_size=(8, 40, 40),
            context=(0, 0, 0),
            bias=BIAS,
            **options,
        )

    return make, data.affinities.array("r")[:]


def test_compute_fragments_is_mwatershed_on_the_region(task_and_affs):
    make, affs = task_and_affs
    clusters = make().compute_fragments(affs)
    weights = affs + np.reshape(BIAS, (-1, 1, 1, 1))
    expected = mwatershed.agglom(weights, [list(o) for o in NEIGHBORHOOD])
    np.testing.assert_array_equal(clusters, expected)


def test_get_fragments_applies_the_filters_to_the_region(task_and_affs):
    make, affs = task_and_affs
    clusters = make().compute_fragments(affs)
    ids, sizes = np.unique(clusters, return_counts=True)
    small = np.isin(clusters, ids[sizes < 50])
    assert small.any() and not small.all()
    filtered = make(remove_debris=50).get_fragments(affs)
    np.testing.assert_array_equal(filtered, np.where(small, 0, clusters))


def test_filter_avg_fragments_drops_weak_fragments(task_and_affs):
    make, affs = task_and_affs
    fragments = np.zeros(affs.shape[1:], dtype=np.uint64)
    fragments[:, :20], fragments[:, 20:] = 1, 2
    affs = affs.copy()
    affs[:3, :, :20] = 0.3  # fragment 1 is weak on the direct offsets
    affs[:3, :, 20:] = 0.8
    affs[3:] = 0.0  # long-range offsets do not count
    kept = make().filter_avg_fragments(affs, fragments, 0.5)
    assert np.all(kept[:, :20] == 0) and np.all(kept[:, 20:] == 2)


def test_fragment_centers_are_centers_of_mass_in_world_units(task_and_affs):
    make, _ = task_and_affs
    fragments = np.zeros((2, 4, 4), dtype=np.uint64)
    fragments[0, 0, :2] = 5  # voxels (0,0,0), (0,0,1)
    fragments[1, 3, 3] = 7
    centers = make().fragment_centers(fragments, (100, 10, 20), (40, 4, 4))
    assert set(centers) == {5, 7}
    assert centers[5]["size"] == 2 and centers[7]["size"] == 1
    assert centers[5]["center"] == (120.0, 12.0, 24.0)
    assert centers[7]["center"] == (160.0, 24.0, 34.0)


def test_seeding_methods_place_seeds_and_territories(task_and_affs):
    make, _ = task_and_affs
    # two square rooms side by side, 20 x 20 voxels each, in one section
    interior = np.zeros((1, 24, 48), dtype=bool)
    interior[0, 2:22, 2:22] = interior[0, 2:22, 26:46] = True
    task = make(min_seed_distance=5, voronoi="geodesic", remove_debris=5)
    distances = distance_transform_edt(interior)
    seeds = task.get_seeds(distances, 5)
    seeds[~interior] = 0
    assert len(np.unique(seeds[0, :, :24])) > 1 and len(np.unique(seeds[0, :, 24:])) > 1
    cells = task.seed_cells(seeds, distances, interior)
    # every masked voxel belongs to a seed of its own room
    left, right = np.unique(seeds[0, :, :24]), np.unique(seeds[0, :, 24:])
    assert set(np.unique(cells[0, :, :24][interior[0, :, :24]])) <= set(left)
    assert set(np.unique(cells[0, :, 24:][interior[0, :, 24:]])) <= set(right)
    assert np.all(cells[~interior] == 0)
    adaptive = make(adaptive_seed_spacing=2.0).get_adaptive_seeds(
        distance_transform_edt(interior, sampling=(4, 4, 4)), (4, 4, 4)
    )
    assert (adaptive[interior] > 0).sum() >= 2 and np.all(adaptive[~interior] == 0)


def test_absorb_small_cells_and_filter_min_extent(task_and_affs):
    make, _ = task_and_affs
    task = make(remove_debris=5, min_extent=(2, 1, 1))
    cells = np.zeros((1, 4, 12), dtype=np.uint64)
    cells[0, :, :5], cells[0, :, 5:6], cells[0, :, 6:] = 1, 2, 3
    assert np.all(task.absorb_small_cells(cells)[0, :, 5] == 3)
    fragments = np.zeros((3, 4, 4), dtype=np.uint64)
    fragments[0] = 1  # one section thick
    fragments[1:, :2] = 2  # two sections
    kept = task.filter_min_extent(fragments)
    assert np.all(kept[0] == 0) and np.all(kept[1:, :2] == 2)
