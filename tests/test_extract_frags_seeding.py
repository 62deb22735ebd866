"""ExtractFrags' seeding and extent options (volara 1.0.5's fields):
fragments equal to volara 1.0.5's on the same data, and each option doing
what its field says on volumes built for it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.ndimage import distance_transform_edt
from skimage.metrics import adapted_rand_error

from conftest import write_array
from volara.blockwise import ExtractFrags
from volara.datasets import Affs, Labels
from volara.dbs import SQLite
from volara.kernels.mutex_watershed import extract_fragments
from volara.kernels.seeding import (
    Seeding,
    absorb_small_territories,
    adaptive_seeds,
    seed_territories,
    spaced_seeds,
)
from volara.sample_data import generate_sample_data

BLOCK, CONTEXT = (10, 48, 48), (5, 24, 24)
DIRECT = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]

# Fragments (count, and voxels left at 0) that volara 1.0.5 from PyPI wrote
# for each option set on the sample data of `sample()` (ExtractFrags alone,
# 8 blocks, bias -0.4 short range / -0.7 long range; affinities without two
# equal values, whose order of equal edges would be up to the
# implementation).
VOLARA1_FRAGMENTS = {
    "plain": ({}, 951, 0),
    "debris": ({"remove_debris": 30}, 784, 940),
    "weak": ({"filter_fragments": 0.6}, 878, 784),
    "min_extent": ({"min_extent": [2, 1, 1]}, 815, 987),
    "spaced_seeds": ({"min_seed_distance": 5}, 981, 0),
    "adaptive_geodesic": (
        {"adaptive_seed_spacing": 2.0, "voronoi": "geodesic", "remove_debris": 20},
        1029,
        465,
    ),
    "adaptive_euclidean": (
        {"adaptive_seed_spacing": 2.0, "voronoi": "euclidean", "min_extent": [2, 1, 1]},
        874,
        1356,
    ),
    "seed_decay": (
        {"min_seed_distance": 5, "seed_eps": 0.02, "max_seed_decay_distance": 10},
        2037,
        1,
    ),
    "all_offsets_mask": (
        {"min_seed_distance": 4, "boundary_mask_offsets": "all", "voronoi": "geodesic"},
        2801,
        0,
    ),
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Affs:
    root = tmp_path_factory.mktemp("seeding")
    data = generate_sample_data(
        root / "data.zarr",
        shape=(20, 96, 96),
        num_cells=25,
        noise=0.2,
        blur=1.0,
        seed=3,
        affs_dtype="float64",
    )
    return data.affinities


def extract_frags(tmp_path: Path, affs: Affs, name: str, **options) -> ExtractFrags:
    neighborhood = affs.neighborhood or []
    return ExtractFrags(
        db=SQLite(path=tmp_path / f"{name}.db"),
        affs_data=affs,
        frags_data=Labels(store=tmp_path / "out.zarr" / name),
        block_size=BLOCK,
        context=CONTEXT,
        bias=[-0.4 if max(map(abs, o)) == 1 else -0.7 for o in neighborhood],
        num_workers=2,
        **options,
    )


@pytest.mark.parametrize("case", sorted(VOLARA1_FRAGMENTS))
def test_fragments_equal_volara1s(sample, tmp_path, case):
    options, count, zeros = VOLARA1_FRAGMENTS[case]
    # as a volara 1.0.5 config carries them: through JSON
    task = extract_frags(tmp_path, sample, case, **json.loads(json.dumps(options)))
    task.run_blockwise()
    fragments = task.frags_data.array("r")[:]
    assert len(np.unique(fragments[fragments != 0])) == count
    assert int((fragments == 0).sum()) == zeros
    db = task.db.open("r")
    assert len(db.read_nodes()) == count
    db.close()


def uniform_affinities(shape, value=0.9) -> np.ndarray:
    return np.full((len(DIRECT), *shape), value, dtype=np.float32)


def three_chambers() -> tuple[np.ndarray, np.ndarray]:
    """One section with an object made of three round chambers (radius 12
    voxels) joined by narrow necks, affinity 0.9 inside and 0 outside:
    its boundary distance peaks once per chamber. Returns (affs, inside)."""
    yy, xx = np.mgrid[:32, :100]
    inside = np.zeros((1, 32, 100), dtype=bool)
    for center in (18, 50, 82):
        inside[0] |= (yy - 16) ** 2 + (xx - center) ** 2 < 12**2
    inside[0, 14:18, 18:82] = True  # the necks
    affs = np.zeros((len(DIRECT), *inside.shape), dtype=np.float32)
    for channel, offset in enumerate(DIRECT):
        partner = np.roll(inside, [-o for o in offset], axis=(0, 1, 2))
        affs[channel] = np.where(inside & partner, 0.9, 0.0)
    return affs, inside


def interior_of(affs: np.ndarray) -> np.ndarray:
    """The boundary mask of the in-plane direct offsets, computed by hand."""
    return (affs[1] + affs[2]) / 2 > 0.5


def chamber_seeds(affs: np.ndarray) -> np.ndarray:
    interior = interior_of(affs)
    seeds = spaced_seeds(distance_transform_edt(interior), 10)
    seeds[~interior] = 0
    return seeds


def test_seeds_split_an_object_into_one_fragment_per_seed():
    affs, inside = three_chambers()
    plain = extract_fragments(affs, DIRECT, [-0.5] * 3)
    assert len(np.unique(plain[inside])) == 1
    seeds = chamber_seeds(affs)
    count = len(np.unique(seeds)) - 1
    assert count >= 3  # at least one per chamber
    seeded = extract_fragments(
        affs,
        DIRECT,
        [-0.5] * 3,
        seeding=Seeding(min_seed_distance=10, boundary_mask_channels=(1, 2)),
    )
    # the seeds never merge: one fragment per seed, every seed in its own
    assert len(np.unique(seeded[inside])) == count
    assert len(np.unique(seeded[seeds != 0])) == count


def test_geodesic_seams_cut_the_object_where_the_territories_meet():
    affs, _ = three_chambers()
    interior = interior_of(affs)
    territories = seed_territories(
        chamber_seeds(affs),
        distance_transform_edt(interior),
        interior,
        (1, 1, 1),
        "geodesic",
    )

    def disagreement(voronoi) -> float:
        seeding = Seeding(
            min_seed_distance=10, boundary_mask_channels=(1, 2), voronoi=voronoi
        )
        fragments = extract_fragments(affs, DIRECT, [-0.5] * 3, seeding=seeding)
        truth = territories[interior].astype(np.int64)
        return float(adapted_rand_error(truth, fragments[interior])[0])

    # equal affinities everywhere: without seams the cuts between the seeds'
    # fragments fall anywhere (measured 0.67); with them, along the
    # territories (0.12: the one-voxel rim outside the mask is not cut)
    with_seams, without = disagreement("geodesic"), disagreement(None)
    assert with_seams < 0.2
    assert with_seams < without / 3


def test_adaptive_spacing_seeds_thin_processes_densely_and_thick_ones_sparsely():
    # a thick slab (radius 20 voxels) and a thin one (radius 3) in one plane
    interior = np.zeros((1, 120, 200), dtype=bool)
    interior[0, 10:50, 10:190] = True
    interior[0, 80:86, 10:190] = True
    distances = distance_transform_edt(interior)
    seeds = adaptive_seeds(distances, (1, 1, 1), 2.0, largest_spacing=60.0)
    thick = (seeds[0, 10:50] > 0).sum() / interior[0, 10:50].sum()
    thin = (seeds[0, 80:86] > 0).sum() / interior[0, 80:86].sum()
    assert (seeds[0, 80:86] > 0).sum() >= 10  # along the whole length
    assert thin > 3 * thick
    # a smaller factor seeds more densely
    denser = adaptive_seeds(distances, (1, 1, 1), 1.0, largest_spacing=60.0)
    assert (denser > 0).sum() > (seeds > 0).sum()


def test_small_territories_join_their_largest_neighbor():
    cells = np.zeros((1, 4, 12), dtype=np.uint64)
    cells[0, :, :5], cells[0, :, 5:6], cells[0, :, 6:] = 1, 2, 3
    absorbed = absorb_small_territories(cells, min_size=5)
    # territory 2 (4 voxels) touches 1 (20) and 3 (24): it joins 3
    assert np.all(absorbed[0, :, 5] == 3)
    np.testing.assert_array_equal(absorbed[cells != 2], cells[cells != 2])


def test_seed_decay_breaks_up_what_lies_far_from_the_seeds():
    affs, inside = three_chambers()

    def fragments_with(**decay) -> int:
        seeding = Seeding(min_seed_distance=10, boundary_mask_channels=(1, 2), **decay)
        fragments = extract_fragments(affs, DIRECT, [-0.5] * 3, seeding=seeding)
        return len(np.unique(fragments[fragments != 0]))

    # affinity 0.9 + bias -0.5 = 0.4: a decay below 0.4 changes nothing,
    # beyond it the voxels far from every seed stop merging
    seeded = fragments_with()
    assert fragments_with(seed_eps=0.02) == seeded
    assert fragments_with(seed_eps=0.1) > seeded
    # capped at 3 voxels the decay stays below 0.4 again
    assert fragments_with(seed_eps=0.1, max_seed_decay_distance=3) == seeded


def test_min_extent_removes_fragments_one_section_thick(tmp_path):
    # sections that never join across z (z affinity 0): every fragment is a
    # plate one section thick, except where z affinities are high
    affs = uniform_affinities((8, 32, 32))
    affs[0, :, :, :16] = 0.0
    affs[2, :, :, 15] = 0.0  # a wall between the left and the right half
    write_array(
        tmp_path / "d.zarr/affs",
        affs,
        voxel_size=(40, 4, 4),
        attrs={"neighborhood": [list(o) for o in DIRECT]},
    )
    task = ExtractFrags(
        db=SQLite(path=tmp_path / "g.db"),
        affs_data=Affs(store=tmp_path / "d.zarr/affs"),
        frags_data=Labels(store=tmp_path / "d.zarr/frags"),
        block_size=(8, 32, 32),
        context=(0, 0, 0),
        bias=[-0.5] * 3,
        min_extent=(2, 1, 1),
    )
    task.run_blockwise(multiprocessing=False)
    fragments = task.frags_data.array("r")[:]
    assert np.all(fragments[:, :, :16] == 0)
    assert np.all(fragments[:, :, 16:] != 0)
    assert len(np.unique(fragments[:, :, 16:])) == 1
    # without min_extent the plates are fragments
    plates = extract_fragments(affs, DIRECT, [-0.5] * 3)
    assert len(np.unique(plates[:, :, :16])) == 8


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (
            {"min_seed_distance": 5, "adaptive_seed_spacing": 2.0},
            "set one or the other",
        ),
        ({"boundary_mask_offsets": [0, 9]}, "boundary_mask_offsets"),
        ({"boundary_mask_offsets": []}, "boundary_mask_offsets"),
        ({"min_extent": [2, 1]}, "min_extent"),
        ({"min_seed_distance": 0}, "min_seed_distance"),
        ({"voronoi": "manhattan"}, "voronoi"),
    ],
)
def test_bad_seeding_options_are_refused_at_construction(
    sample, tmp_path, options, words
):
    with pytest.raises(ValidationError, match=words):
        extract_frags(tmp_path, sample, "bad", **options)


def test_seed_options_without_seeds_warn_but_load(sample, tmp_path):
    # volara 1.0.5 ignored them silently; its configs must still load
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = extract_frags(
            tmp_path,
            sample,
            "unseeded",
            voronoi="geodesic",
            seed_eps=0.1,
            bulk_write=True,
        )
    assert task.seeding is None
    assert any("only act on seeds" in str(w.message) for w in caught)
