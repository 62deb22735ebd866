"""Seeds for the mutex watershed, placed from the affinities alone.

ExtractFrags can plant seeds inside objects before the watershed (volara
1.0.5's seeding options): voxels where the affinities say "inside an object"
form the *boundary mask*; its distance transform peaks on object medial
axes, and seeds go on those peaks, either at one spacing everywhere or at a
spacing that follows the local object radius. Seeds of different ids never
merge, so every seed ends up in its own fragment. Optionally the affinities
decay with the distance from the nearest seed (more, smaller fragments), and
the direct-neighbor affinities between the territories of two seeds are
damped so that fragment boundaries fall where the territories meet.

Every function works on one read region (block plus context) in voxel
indices; distances are in world units where a ``voxel_size`` is passed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.ndimage import distance_transform_edt, label, maximum_filter
from skimage.segmentation import watershed

from .affinities import offset_slices

SEAM_DAMPING = 0.1
"""Factor applied to attractive direct-neighbor edges that cross between two
seed territories. The mutex watershed takes edges by decreasing strength, so
damped edges come last: both territories have grown by then and the mutex
between their seeds refuses the crossing. Where no seed pair is involved
the edge still merges, so unseeded tissue is not cut."""

FLOOD_COMPACTNESS = 1.0
"""Compactness of the geodesic flood (`skimage.segmentation.watershed`):
along a ridge where the boundary distance is flat, it makes ties go to the
nearest seed instead of to whichever seed's front arrived first."""


@dataclass(frozen=True)
class Seeding:
    """How ExtractFrags seeds one read region (see its fields of the same
    names for the meaning)."""

    min_seed_distance: int | None = None
    adaptive_seed_spacing: float | None = None
    boundary_mask_channels: tuple[int, ...] = ()
    seed_eps: float | None = None
    max_seed_decay_distance: int | None = None
    voronoi: Literal["geodesic", "euclidean"] | None = None
    min_territory_size: int = 0
    """Territories smaller than this (voxels) join their largest neighbor
    before seams are cut (ExtractFrags' ``remove_debris``)."""
    largest_spacing: float = float("inf")
    """Upper limit of the adaptive spacing, world units (the context)."""

    @property
    def places_seeds(self) -> bool:
        return (
            self.min_seed_distance is not None or self.adaptive_seed_spacing is not None
        )


def boundary_mask(affs: np.ndarray, channels: Sequence[int]) -> np.ndarray:
    """Voxels whose mean affinity over ``channels`` (affinities in [0, 1],
    channels first) is above 0.5: object interiors."""
    return np.asarray(affs)[list(channels)].mean(axis=0) > 0.5


def continue_past_faces(
    mask: np.ndarray, outside_low: Sequence[int], outside_high: Sequence[int]
) -> np.ndarray:
    """``mask`` with each band that lies outside the stored volume (counted
    in voxels per side of each axis) replaced by copies of the nearest plane
    inside it.

    Reads past the volume are zero-filled, which would make the volume face
    look like an object boundary to the distance transform and crowd seeds
    against it; continuing the mask seeds the face like any block face.
    """
    mask = mask.copy()
    for axis, (low, high) in enumerate(zip(outside_low, outside_high, strict=True)):
        low, high = int(low), int(high)
        if low + high >= mask.shape[axis]:
            continue  # nothing inside to copy from
        moved = np.moveaxis(mask, axis, 0)
        if low > 0:
            moved[:low] = moved[low]
        if high > 0:
            moved[-high:] = moved[-high - 1]
    return mask


def spaced_seeds(distances: np.ndarray, min_seed_distance: int) -> np.ndarray:
    """Seeds on the local maxima of ``distances`` within a cube of
    ``min_seed_distance`` voxels; a plateau of equal maxima is one seed.
    uint64 ids ``1..n`` (0 elsewhere, including zero-distance voxels)."""
    peaks = maximum_filter(distances, size=int(min_seed_distance)) == distances
    peaks &= distances > 0
    seeds, _ = label(peaks)
    return seeds.astype(np.uint64)


def adaptive_seeds(
    distances: np.ndarray,
    voxel_size: Sequence[float],
    spacing_factor: float,
    largest_spacing: float,
) -> np.ndarray:
    """Seeds at a spacing of ``spacing_factor`` times the local object
    radius, in world units.

    ``distances`` are boundary distances in world units; candidates are
    medial-axis voxels (local maxima over a small ellipsoid) deeper than one
    voxel, taken deepest first. A candidate is kept unless a kept seed lies
    closer than *its own* spacing, so a thick object does not suppress the
    seeds of a thin one passing by. Spacings are clipped to
    ``[2 * largest voxel edge, largest_spacing]`` (the context: further than
    that, seeding would depend on where the blocks fall). uint64 ids
    ``1..n`` in the order the seeds were kept.
    """
    voxel = np.asarray(voxel_size, dtype=np.float64)
    floor = 2.0 * float(voxel.max())
    ceiling = max(float(largest_spacing), floor)
    coords, depths = _medial_candidates(distances, voxel, floor)
    seeds = np.zeros(distances.shape, dtype=np.uint64)
    if depths.size == 0:
        return seeds
    positions = coords * voxel
    spacing_squared = np.clip(spacing_factor * depths, floor, ceiling) ** 2
    nearest_squared = np.full(depths.size, np.inf)
    kept = []
    for index in range(depths.size):
        if nearest_squared[index] < spacing_squared[index]:
            continue
        kept.append(index)
        step = positions - positions[index]
        np.minimum(
            nearest_squared, np.einsum("ij,ij->i", step, step), out=nearest_squared
        )
    chosen = coords[kept]
    seeds[tuple(chosen.T)] = np.arange(1, len(kept) + 1, dtype=np.uint64)
    return seeds


def _medial_candidates(
    distances: np.ndarray, voxel: np.ndarray, spacing: float
) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of ``distances`` over an ellipsoid of radius ``spacing``
    (world units), deeper than one voxel edge; at most one per grid cell of
    ``spacing``, the deepest. Returns ``(coords (n, ndim), depths)`` sorted
    by decreasing depth."""
    radii = np.maximum(1, np.rint(spacing / voxel)).astype(int)
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    ellipsoid = sum((g / r) ** 2 for g, r in zip(grid, radii, strict=True)) <= 1.0
    peaks = maximum_filter(distances, footprint=ellipsoid) == distances
    peaks &= distances > voxel.max()
    coords = np.argwhere(peaks)
    depths = distances[peaks]
    # numpy's default (unstable) sort, as volara 1.0.5: equal depths are
    # common, and their order decides which seed of a tie is kept
    order = np.argsort(-depths)
    coords, depths = coords[order], depths[order]
    # closer than the spacing, only the deepest can be kept anyway: one
    # candidate per cell bounds the greedy pass
    cells = coords // np.maximum(1, np.floor(spacing / voxel)).astype(int)
    _, first = np.unique(cells, axis=0, return_index=True)
    first.sort()
    return coords[first], depths[first]


def seed_decay(seeds: np.ndarray, cap: float | None) -> np.ndarray:
    """Distance (voxels) of every voxel from the nearest seed, at most
    ``cap`` if given."""
    distance = distance_transform_edt(seeds == 0)
    if cap is not None:
        np.minimum(distance, cap, out=distance)
    return distance


def seed_territories(
    seeds: np.ndarray,
    distances: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    method: Literal["geodesic", "euclidean"],
) -> np.ndarray:
    """Which seed owns each voxel. ``"geodesic"`` floods the boundary
    distances (world units) from the seeds inside ``mask``, so a seed only
    claims tissue connected to it and two territories meet at a
    constriction; voxels outside the mask are 0. ``"euclidean"`` gives every
    voxel its nearest seed in space (world units)."""
    if method == "euclidean":
        nearest = distance_transform_edt(
            seeds == 0,
            sampling=tuple(float(v) for v in voxel_size),
            return_distances=False,
            return_indices=True,
        )
        return seeds[tuple(nearest)]
    return watershed(
        -distances.astype(np.float32),
        markers=seeds.astype(np.int64),
        mask=mask,
        compactness=FLOOD_COMPACTNESS,
    ).astype(np.uint64)


def absorb_small_territories(territories: np.ndarray, min_size: int) -> np.ndarray:
    """Every territory of fewer than ``min_size`` voxels merged into its
    largest face neighbor (chains followed to their end), so that seams
    cannot cut off a piece the debris filter would delete. 0 is no
    territory and absorbs nothing."""
    flat = territories.astype(np.intp, copy=False)
    sizes = np.bincount(flat.ravel())
    small = sizes < min_size
    small[0] = False
    if not small.any():
        return territories
    sources, targets = _touching_pairs(flat, small)
    # absorbing only into a strictly larger (size, id) keeps the merges
    # acyclic, so following them ends
    bigger = (targets != 0) & (
        (sizes[targets] > sizes[sources])
        | ((sizes[targets] == sizes[sources]) & (targets > sources))
    )
    sources, targets = (
        sources[bigger & small[sources]],
        targets[bigger & small[sources]],
    )
    into = np.arange(sizes.size)
    order = np.lexsort((targets, sizes[targets]))  # the largest neighbor last
    into[sources[order]] = targets[order]
    while True:
        followed = into[into]
        if np.array_equal(followed, into):
            break
        into = followed
    return into[flat].astype(territories.dtype)


def _touching_pairs(labels: np.ndarray, involved: np.ndarray):
    """Ordered pairs of different labels that touch across a face, where
    one of them is ``involved``; both directions."""
    sources, targets = [], []
    for axis in range(labels.ndim):
        offset = [0] * labels.ndim
        offset[axis] = 1
        first, second = offset_slices(labels.shape, offset)
        a, b = labels[first], labels[second]
        differ = (a != b) & (involved[a] | involved[b])
        sources += [a[differ], b[differ]]
        targets += [b[differ], a[differ]]
    return np.concatenate(sources), np.concatenate(targets)


def damp_seams(
    weights: np.ndarray,
    territories: np.ndarray,
    mask: np.ndarray,
    neighborhood: Sequence[Sequence[int]],
) -> None:
    """Multiply, in place, every attractive edge weight of a one-voxel
    offset whose two voxels are in ``mask`` and in different territories by
    `SEAM_DAMPING`. Longer offsets are left alone: each spans several
    territories, and the seeds' mutex stops merges across a seam anyway."""
    for channel, offset in enumerate(neighborhood):
        if max(abs(int(o)) for o in offset) > 1:
            continue
        first, second = offset_slices(territories.shape, offset)
        crosses = (
            (territories[first] != territories[second]) & mask[first] & mask[second]
        )
        edges = weights[channel][first]
        edges[crosses & (edges > 0)] *= SEAM_DAMPING


def thin_clusters(clusters: np.ndarray, min_extent: Sequence[int]) -> np.ndarray:
    """The non-zero cluster ids whose bounding box spans fewer voxels than
    ``min_extent`` along some axis."""
    ids, inverse = np.unique(clusters, return_inverse=True)
    inverse = inverse.ravel()
    thin = np.zeros(ids.size, dtype=bool)
    for axis, required in enumerate(min_extent):
        if required <= 1:
            continue
        view = [1] * clusters.ndim
        view[axis] = clusters.shape[axis]
        coordinate = np.broadcast_to(
            np.arange(clusters.shape[axis]).reshape(view), clusters.shape
        ).ravel()
        low = np.full(ids.size, clusters.shape[axis], dtype=np.int64)
        high = np.full(ids.size, -1, dtype=np.int64)
        np.minimum.at(low, inverse, coordinate)
        np.maximum.at(high, inverse, coordinate)
        thin |= high - low + 1 < int(required)
    return ids[thin & (ids != 0)]
