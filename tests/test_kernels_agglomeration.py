"""Contact statistics between fragments, on cases checkable by hand."""

from __future__ import annotations

import numpy as np
import pytest

from volara.kernels.affinities import offset_slices
from volara.kernels.agglomeration import (
    adjacent_pairs,
    boundary_mask,
    contacts,
    embedding_similarities,
    fragment_distances,
    mean_affinities,
    pair_distances,
)

NEIGHBORHOOD = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]


def two_fragments() -> tuple[np.ndarray, np.ndarray]:
    """Fragment 7 on x < 2, fragment 3 on x >= 2 in a (2, 2, 4) block: they
    touch over a 2x2 face between x=1 and x=2."""
    fragments = np.zeros((2, 2, 4), dtype=np.uint64)
    fragments[:, :, :2] = 7
    fragments[:, :, 2:] = 3
    affinities = np.zeros((3, 2, 2, 4), dtype=np.float32)
    affinities[2, :, :, 1] = [
        [0.1, 0.2],
        [0.3, 0.6],
    ]  # the x-affinities across the face
    affinities[2, :, :, 0] = 0.9  # inside fragment 7: must not count
    affinities[0] = 0.5  # z-affinities: all inside one fragment
    return fragments, affinities


def test_mean_over_a_known_face():
    fragments, affinities = two_fragments()
    u, v, means = mean_affinities(
        fragments, affinities, NEIGHBORHOOD, {"x": [(0, 0, 1)], "all": NEIGHBORHOOD}
    )
    assert u.tolist() == [3] and v.tolist() == [7]
    assert means["x"][0] == pytest.approx((0.1 + 0.2 + 0.3 + 0.6) / 4)
    assert means["all"][0] == pytest.approx((0.1 + 0.2 + 0.3 + 0.6) / 4)


def test_group_without_contacts_is_nan():
    fragments, affinities = two_fragments()
    _, _, means = mean_affinities(
        fragments, affinities, NEIGHBORHOOD, {"x": [(0, 0, 1)], "z": [(1, 0, 0)]}
    )
    assert np.isnan(means["z"][0])


def test_negative_offset_reads_the_first_voxel():
    # Offset (0, 0, -1) at x=2 pairs x=2 with x=1: its affinity lives at x=2.
    fragments, _ = two_fragments()
    affinities = np.zeros((1, 2, 2, 4), dtype=np.float32)
    affinities[0, :, :, 2] = 0.8
    affinities[0, :, :, 1] = 0.1  # pairs x=1 with x=0: inside fragment 7
    _, _, means = mean_affinities(
        fragments, affinities, [(0, 0, -1)], {"a": [(0, 0, -1)]}
    )
    assert means["a"].tolist() == [pytest.approx(0.8)]


def test_background_and_long_range_offsets():
    # 1 0 2 along x: 1 and 2 do not touch, but a 2-voxel offset links them
    fragments = np.array([[[1, 0, 2]]], dtype=np.uint64)
    affinities = np.zeros((2, 1, 1, 3))
    affinities[1, 0, 0, 0] = 0.25
    u, v, means = mean_affinities(
        fragments,
        affinities,
        [(0, 0, 1), (0, 0, 2)],
        {"short": [(0, 0, 1)], "long": [(0, 0, 2)]},
    )
    assert (u.tolist(), v.tolist()) == ([1], [2])
    assert np.isnan(means["short"][0])
    assert means["long"][0] == pytest.approx(0.25)


def test_several_pairs_sorted():
    fragments = np.array([[[5, 5, 2, 9]]], dtype=np.uint64)
    affinities = np.zeros((1, 1, 1, 4))
    affinities[0, 0, 0, :3] = [0.0, 0.4, 0.7]
    u, v, means = mean_affinities(
        fragments, affinities, [(0, 0, 1)], {"a": [(0, 0, 1)]}
    )
    assert list(zip(u.tolist(), v.tolist(), means["a"].tolist(), strict=True)) == [
        (2, 5, pytest.approx(0.4)),
        (2, 9, pytest.approx(0.7)),
    ]


def test_offset_not_in_neighborhood_is_an_error():
    fragments, affinities = two_fragments()
    with pytest.raises(ValueError, match=r"\(0, 0, 2\) is not in the neighborhood"):
        mean_affinities(fragments, affinities, NEIGHBORHOOD, {"x": [(0, 0, 2)]})


def test_count_box_counts_each_contact_once():
    # Split the volume in two boxes along x: the face between x=1 and x=2
    # belongs to the box holding x=1, so the halves add up to the whole.
    rng = np.random.default_rng(0)
    fragments = rng.integers(0, 4, size=(3, 4, 6)).astype(np.uint64)
    whole = contacts(fragments, (0, 0, 1))
    left = contacts(fragments, (0, 0, 1), count_box=((0, 0, 0), (3, 4, 2)))
    right = contacts(fragments, (0, 0, 1), count_box=((0, 0, 2), (3, 4, 6)))
    assert sorted(whole[2].tolist()) == sorted(left[2].tolist() + right[2].tolist())
    assert set(left[2].tolist()).isdisjoint(right[2].tolist())


def test_offset_slices_clip_to_shape():
    first, second = offset_slices((2, 3, 4), (0, -1, 5))
    assert first == (slice(0, 2), slice(1, 3), slice(0, 0))
    assert second == (slice(0, 2), slice(0, 2), slice(0, 0))


def test_adjacent_pairs_face_neighbours_only():
    fragments = np.zeros((1, 3, 3), dtype=np.uint64)
    fragments[0, 0, 0] = 1
    fragments[0, 1, 1] = 2  # diagonal to 1: not adjacent
    fragments[0, 1, 2] = 3
    u, v = adjacent_pairs(fragments)
    assert list(zip(u.tolist(), v.tolist(), strict=True)) == [(2, 3)]


def test_pair_distances_and_missing_nodes():
    ids = np.array([4, 1], dtype=np.uint64)
    positions = np.array([[0.0, 3.0, 4.0], [0.0, 0.0, 0.0]])
    distances = pair_distances(np.array([1, 1]), np.array([4, 8]), ids, positions)
    assert distances[0] == pytest.approx(5.0)
    assert np.isnan(distances[1])


def test_embedding_similarities():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0], [-3.0, 0.0]])
    assert embedding_similarities(a, b, "cosine") == pytest.approx([0.0, 1.0, -1.0])
    assert embedding_similarities(a, b, "euclidean") == pytest.approx(
        [-(5**0.5), -(2**0.5), -4.0]
    )
    assert embedding_similarities(a, b, "max") == pytest.approx([-2.0, -1.0, -4.0])
    zero = np.zeros((1, 2))
    assert embedding_similarities(zero, zero, "cosine") == pytest.approx([0.0])


def test_boundary_mask_marks_voxels_next_to_another_value():
    fragments = np.array([[[3, 3, 3, 4, 5, 5, 0]]], dtype=np.uint64)
    assert boundary_mask(fragments)[0, 0].tolist() == [
        False,
        False,
        True,
        True,  # 3 | 4 | 5: a Laplacian would be 0 here
        True,
        True,
        False,  # background is never a boundary voxel
    ]


def test_fragment_distances_between_nearest_voxels():
    # 1 and 2 share a face along z; 3 is two voxels from 1 along x (with
    # background between) and diagonal to 2; voxel size (1, 2, 2)
    fragments = np.zeros((2, 1, 5), dtype=np.uint64)
    fragments[0, 0, :2] = 1
    fragments[1, 0, :2] = 2
    fragments[0, 0, 3] = 3
    u, v, distance = fragment_distances(fragments, (1, 2, 2), 5.0)
    assert list(zip(u.tolist(), v.tolist(), distance.tolist(), strict=True)) == [
        (1, 2, 1.0),
        (1, 3, 4.0),
        (2, 3, pytest.approx(17**0.5)),
    ]
    # the threshold is inclusive and in world units
    u, v, _ = fragment_distances(fragments, (1, 2, 2), 4.0)
    assert list(zip(u.tolist(), v.tolist(), strict=True)) == [(1, 2), (1, 3)]
    # only pairs whose smaller id is a source
    u, v, _ = fragment_distances(fragments, (1, 2, 2), 5.0, sources=np.array([2]))
    assert list(zip(u.tolist(), v.tolist(), strict=True)) == [(2, 3)]


def test_fragment_distances_match_all_voxel_pairs():
    rng = np.random.default_rng(3)
    fragments = rng.integers(0, 6, size=(7, 9)).astype(np.uint64) * 10
    u, v, distance = fragment_distances(fragments, (3, 1), 4.5)
    expected = {}
    points = {i: np.argwhere(fragments == i) * [3, 1] for i in (10, 20, 30, 40, 50)}
    for a in points:
        for b in points:
            if a < b:
                d = np.sqrt(((points[a][:, None] - points[b][None]) ** 2).sum(-1))
                if d.min() <= 4.5:
                    expected[(a, b)] = d.min()
    pairs = zip(u.tolist(), v.tolist(), strict=True)
    found = dict(zip(pairs, distance.tolist(), strict=True))
    assert found == pytest.approx(expected)
