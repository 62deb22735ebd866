"""Fragments from affinities by mutex watershed, and what is measured on them.

`mutex_watershed_clusters` runs the mutex watershed (`volara.kernels.mws`,
which gives `mwatershed.agglom`'s output and takes tied edges in an order
fixed by their position in the whole volume): its cluster ids are voxel
indices (so an unseeded cluster's id can equal a seed's value) and it leaves
0 on voxels that no attractive edge touches. On top of it,
`extract_fragments` makes ExtractFrags' fragments (connected pieces of the
clusters inside a block, filtered on the whole read region) and
`mutex_watershed` SeededExtractFrags' labels (seeds kept apart from the
voxel-index ids).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter
from skimage.measure import label as label_components

from . import mws
from .affinities import pair_mask
from .relabel import relabel, sorted_mapping
from .seeding import (
    Seeding,
    absorb_small_territories,
    adaptive_seeds,
    boundary_mask,
    continue_past_faces,
    damp_seams,
    seed_decay,
    seed_territories,
    spaced_seeds,
    thin_clusters,
)

EMPTY_AFFINITY = 1e-3
"""A region whose largest affinity (scaled to [0, 1]) is below this has no
fragments at all, whatever the bias (as in volara 1.0.5)."""


def affinities_as_float(affs: np.ndarray) -> np.ndarray:
    """Affinities as floats in [0, 1]: integer arrays (e.g. uint8 0..255)
    are divided by their dtype's maximum (float64), float32 stays float32
    (volara 1.0.5 computes the edge weights of float32 affinities in float32,
    and the rounding decides the order of nearly equal edges), other arrays
    become float64. Always a new array."""
    affs = np.asarray(affs)
    if np.issubdtype(affs.dtype, np.integer):
        return affs.astype(np.float64) / np.iinfo(affs.dtype).max
    if affs.dtype == np.float32:
        return affs.copy()
    return affs.astype(np.float64)


def largest_affinity(affs: np.ndarray) -> float:
    """The largest value of ``affs`` on the [0, 1] scale (integer arrays
    divided by their dtype's maximum); 0 for an empty array."""
    affs = np.asarray(affs)
    largest = float(affs.max(initial=0))
    if np.issubdtype(affs.dtype, np.integer):
        largest /= np.iinfo(affs.dtype).max
    return largest


def mutex_watershed_clusters(
    affs: np.ndarray,
    neighborhood: Sequence[Sequence[int]],
    bias: Sequence[float],
    strides: Sequence[Sequence[int]] | None = None,
    randomized_strides: bool = False,
    seeds: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    sigma: Sequence[float] | None = None,
    noise_eps: float | None = None,
    noise_seed: int | Sequence[int] = 0,
    origin: Sequence[int] | None = None,
    decay: np.ndarray | None = None,
    seams: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """The mutex watershed (`mws.agglom`) on the edge weights of ``affs``:
    its raw cluster ids, uint64, spatial shape.

    Arguments as in `mutex_watershed`; ``seeds`` are passed through as they
    are. ``decay`` (spatial shape) is subtracted from every edge starting at
    a voxel; ``seams`` (territories, mask) damps the direct-neighbor edges
    between territories (`seeding.damp_seams`). A voxel that no attractive
    edge (``affinity + bias > 0``) touches is in no cluster and gets 0;
    every other voxel gets an id that names its cluster (the index of one of
    its voxels; a voxel whose attractive edges were all refused is a cluster
    of its own).
    """
    weights = _edge_weights(
        affs, neighborhood, bias, mask, sigma, noise_eps, noise_seed, decay
    )
    if seams is not None:
        damp_seams(weights, seams[0], seams[1], neighborhood)
    return mws.agglom(
        weights,
        [[int(o) for o in offset] for offset in neighborhood],
        seeds=seeds,
        strides=None if strides is None else [[int(s) for s in st] for st in strides],
        randomized_strides=randomized_strides,
        origin=None if origin is None else [int(o) for o in origin],
    )


def mutex_watershed(
    affs: np.ndarray,
    neighborhood: Sequence[Sequence[int]],
    bias: Sequence[float],
    strides: Sequence[Sequence[int]] | None = None,
    randomized_strides: bool = False,
    seeds: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    sigma: Sequence[float] | None = None,
    noise_eps: float | None = None,
    noise_seed: int | Sequence[int] = 0,
    keep_unseeded: bool = True,
    origin: Sequence[int] | None = None,
    crop: tuple[slice, ...] | None = None,
) -> np.ndarray:
    """Split a volume into mutex-watershed clusters, numbered compactly.

    Args:
        affs: Affinities, channels first ``(len(neighborhood), *spatial)``,
            float in [0, 1] or integer (scaled by the dtype's maximum).
        neighborhood: The offset of each channel, in voxels.
        bias: Added to each channel's affinities (one value per offset);
            edges with ``affinity + bias > 0`` attract, the others repel.
        strides: Per offset, use only every n-th edge along each axis.
        randomized_strides: Keep each edge with probability ``1/prod(stride)``
            instead of on a grid.
        seeds: uint64 labels, spatial shape; non-zero voxels keep their value
            and voxels with different seeds never merge.
        mask: Boolean, spatial shape; edges touching a voxel outside it get
            affinity 0 and such voxels are labelled 0.
        sigma: Gaussian smoothing of the affinities per spatial axis, in
            voxels, so fragments grow from object centers outwards.
        noise_eps: Standard deviation of gaussian noise added to the
            affinities, to break ties of quantized affinities; drawn from
            ``noise_seed`` so a rerun gives the same fragments.
        keep_unseeded: With seeds, whether clusters without a seed are kept
            (as new ids above the largest seed) or set to 0.
        origin: Voxel coordinates of ``affs[:, 0, 0, 0]`` in the whole
            volume (default zeros). Edges of equal weight are taken in an
            order fixed by their global coordinates, so a block and the
            whole volume take them alike; ``strides`` count from them too.
        crop: Spatial slices of the labels to return (e.g. a block without
            its context); only these are numbered, which saves a sort of
            the context's voxels.

    Returns uint64 labels of the spatial shape (or of ``crop``). Voxels that
    no attractive edge touches, masked voxels and (with ``keep_unseeded``
    off) unseeded clusters are 0. Seeded clusters keep their seed; the
    others are numbered from 1 (above the largest seed). A cluster is not
    necessarily connected inside ``crop``: see `extract_fragments` for
    fragments that are.
    """
    seed_values, shifted_seeds = _shift_seeds(seeds, np.shape(affs)[1:])
    raw = mutex_watershed_clusters(
        affs,
        neighborhood,
        bias,
        strides=strides,
        randomized_strides=randomized_strides,
        seeds=shifted_seeds,
        mask=mask,
        sigma=sigma,
        noise_eps=noise_eps,
        noise_seed=noise_seed,
        origin=origin,
    )
    seed_base = np.uint64(raw.size + 1)  # as in _shift_seeds
    crop = crop if crop is not None else (slice(None),) * raw.ndim
    labels = _compact_ids(raw[crop], seed_values, seed_base, keep_unseeded)
    if mask is not None:
        labels[~np.asarray(mask, dtype=bool)[crop]] = 0
    return labels


def extract_fragments(
    affs: np.ndarray,
    neighborhood: Sequence[Sequence[int]],
    bias: Sequence[float],
    crop: tuple[slice, ...] | None = None,
    **options,
) -> np.ndarray:
    """Fragments of the region ``crop`` of ``affs``, as volara 1.0.5's
    ExtractFrags makes them: every fragment is one connected piece of one
    mutex-watershed cluster.

    The clusters are those of `filtered_clusters` (``options`` are its
    arguments): computed and filtered over the whole of ``affs`` (a block
    plus its context). Inside ``crop``, each cluster is split into its
    connected pieces (voxels touching by a face, edge or corner), since
    pieces joined only through the context are separate objects as far as
    the block can tell. Returns int64 labels ``1..n`` of the crop's shape,
    numbered in C order of each fragment's first voxel; 0 where
    `filtered_clusters` has 0.
    """
    crop = crop if crop is not None else (slice(None),) * (np.ndim(affs) - 1)
    return connected_pieces(
        filtered_clusters(affs, neighborhood, bias, **options)[crop]
    )


def filtered_clusters(
    affs: np.ndarray,
    neighborhood: Sequence[Sequence[int]],
    bias: Sequence[float],
    min_mean_affinity: float = 0.0,
    min_size: int = 0,
    min_extent: Sequence[int] | None = None,
    seeding: Seeding | None = None,
    voxel_size: Sequence[float] | None = None,
    outside: tuple[Sequence[int], Sequence[int]] | None = None,
    **watershed_options,
) -> np.ndarray:
    """The mutex-watershed clusters of the whole of ``affs`` that pass the
    filters, as raw cluster ids (uint64).

    The watershed is seeded as ``seeding`` says (distances in world units
    of ``voxel_size``; ``outside``: voxels of ``affs`` past the stored
    volume, per side of each axis, see `seeding.continue_past_faces`).
    Clusters with fewer than ``min_size`` voxels, a mean direct-neighbor
    affinity below ``min_mean_affinity`` or a bounding box narrower than
    ``min_extent`` (voxels, per axis) are dropped, all measured over the
    whole of ``affs``. 0 marks voxels no attractive edge touches, dropped
    clusters and masked voxels; if every affinity is below
    `EMPTY_AFFINITY`, everything. ``watershed_options`` are those of
    `mutex_watershed_clusters` but the seeds.
    """
    if "seeds" in watershed_options:
        raise TypeError("seeds are placed from seeding=..., not passed")
    if largest_affinity(affs) < EMPTY_AFFINITY:
        return np.zeros(np.shape(affs)[1:], dtype=np.uint64)
    mask = watershed_options.get("mask")
    if seeding is not None and seeding.places_seeds:
        spacing = voxel_size if voxel_size is not None else (1,) * (np.ndim(affs) - 1)
        watershed_options.update(
            _seeded_options(affs, mask, neighborhood, seeding, spacing, outside)
        )
    clusters = mutex_watershed_clusters(affs, neighborhood, bias, **watershed_options)
    keep = _clusters_to_keep(clusters, affs, neighborhood, min_mean_affinity, min_size)
    if min_extent is not None:
        thin = thin_clusters(clusters, min_extent)
        if thin.size:
            if keep is None:
                keep = np.ones(int(clusters.max()) + 1, dtype=bool)
            keep[thin.astype(np.intp)] = False
    if keep is not None:
        clusters = np.where(keep[clusters], clusters, np.uint64(0))
    if mask is not None:
        clusters = np.where(np.asarray(mask, dtype=bool), clusters, np.uint64(0))
    return clusters


def _seeded_options(
    affs: np.ndarray,
    mask: np.ndarray | None,
    neighborhood: Sequence[Sequence[int]],
    seeding: Seeding,
    voxel_size: Sequence[float],
    outside: tuple[Sequence[int], Sequence[int]] | None,
) -> dict:
    """Seeds (moved above the voxel-index ids), and the affinity decay and
    seams they ask for, for `mutex_watershed_clusters`."""
    values = affinities_as_float(affs)
    if mask is not None:
        values *= np.asarray(mask, dtype=bool)
    interior = boundary_mask(values, seeding.boundary_mask_channels)
    if outside is not None:
        interior = continue_past_faces(interior, *outside)
    distances = distance_transform_edt(
        interior, sampling=tuple(float(v) for v in voxel_size)
    )
    if seeding.adaptive_seed_spacing is not None:
        seeds = adaptive_seeds(
            distances,
            voxel_size,
            seeding.adaptive_seed_spacing,
            seeding.largest_spacing,
        )
    else:
        assert seeding.min_seed_distance is not None  # places_seeds
        # spacing in voxels, as volara 1.0.5 measures it
        seeds = spaced_seeds(
            distance_transform_edt(interior), seeding.min_seed_distance
        )
    seeds[~interior] = 0
    options: dict = {"seeds": _shift_seeds(seeds, seeds.shape)[1]}
    if seeding.seed_eps is not None:
        options["decay"] = seeding.seed_eps * seed_decay(
            seeds, seeding.max_seed_decay_distance
        )
    if seeding.voronoi is not None:
        territories = seed_territories(
            seeds, distances, interior, voxel_size, seeding.voronoi
        )
        if seeding.min_territory_size > 0:
            territories = absorb_small_territories(
                territories, seeding.min_territory_size
            )
        options["seams"] = (territories, interior)
    return options


def _clusters_to_keep(
    clusters: np.ndarray,
    affs: np.ndarray,
    neighborhood: Sequence[Sequence[int]],
    min_mean_affinity: float,
    min_size: int,
) -> np.ndarray | None:
    """Per raw cluster id, whether the cluster passes the size and mean-
    affinity filters (None: no filter asked for). Raw ids are voxel indices,
    so counting by id needs no sort."""
    if min_size <= 0 and min_mean_affinity <= 0:
        return None
    flat = clusters.ravel()
    sizes = np.bincount(flat, minlength=clusters.size)
    keep = sizes >= min_size
    if min_mean_affinity > 0:
        channels = direct_neighbor_channels(neighborhood)
        per_voxel = affinities_as_float(np.asarray(affs)[channels]).mean(axis=0)
        sums = np.bincount(flat, weights=per_voxel.ravel(), minlength=clusters.size)
        keep &= sums >= min_mean_affinity * sizes
    return keep


def connected_pieces(labels: np.ndarray) -> np.ndarray:
    """Each connected piece (face, edge and corner neighbors) of each non-zero
    value of ``labels`` as its own label ``1..n``, numbered in C order of
    the pieces' first voxels; 0 stays 0. int64."""
    pieces = label_components(labels, background=0, connectivity=labels.ndim)
    return np.asarray(pieces, dtype=np.int64)


def _edge_weights(
    affs, neighborhood, bias, mask, sigma, noise_eps, noise_seed, decay=None
) -> np.ndarray:
    """Edge weights for the mutex watershed: affinity (smoothed, with noise,
    0 on pairs touching the mask) plus bias. Computed in the precision of
    `affinities_as_float` and in the order volara 1.0.5 adds them, so edges
    of float affinities are ordered as there; weights of integer affinities
    are then rounded to float32 (their steps are far apart, so the order
    stays, and the kernel sorts float32 in one pass)."""
    affs = np.asarray(affs)
    if affs.shape[0] != len(neighborhood) or len(bias) != len(neighborhood):
        raise ValueError(
            f"{affs.shape[0]} affinity channels, {len(neighborhood)} offsets and "
            f"{len(bias)} biases: need one of each per channel"
        )
    if mask is None and not noise_eps and sigma is None and decay is None:
        return _affinity_plus_bias(affs, bias)
    values = affinities_as_float(affs)
    outside = None
    if mask is not None:
        outside = ~pair_mask(mask, neighborhood)
        values[outside] = 0.0
    bias_column = _bias_column(bias, values)
    if noise_eps:
        rng = np.random.default_rng(noise_seed)
        weights = (rng.standard_normal(values.shape) * noise_eps).astype(values.dtype)
    else:
        weights = np.zeros_like(values)
    if sigma is not None:
        weights += gaussian_filter(values, (0, *sigma)) - values
    weights += bias_column
    if decay is not None:
        # in the decay's precision, rounded once into the weights' (as
        # volara 1.0.5 rounds it)
        np.subtract(weights, decay, out=weights, casting="same_kind")
    weights += values
    if outside is not None:
        # smoothing and noise must not give masked pairs an affinity
        np.copyto(weights, np.broadcast_to(bias_column, weights.shape), where=outside)
    if np.issubdtype(affs.dtype, np.integer):
        weights = weights.astype(np.float32)
    return weights


def _affinity_plus_bias(affs: np.ndarray, bias: Sequence[float]) -> np.ndarray:
    """`_edge_weights` without mask, noise, smoothing or decay, in one pass
    over the block: ``(0 + bias) + affinity`` is ``affinity + bias`` to the
    bit, in the same precision."""
    if np.issubdtype(affs.dtype, np.integer):
        values = affinities_as_float(affs)
        return (values + _bias_column(bias, values)).astype(np.float32)
    dtype = np.float32 if affs.dtype == np.float32 else np.float64
    return np.add(affs, _bias_column(bias, affs, dtype), dtype=dtype)


def _bias_column(
    bias: Sequence[float], like: np.ndarray, dtype: Any = None
) -> np.ndarray:
    """``bias`` as one value per channel, broadcasting over the voxels of
    ``like`` (channels first), in ``dtype`` (default: ``like``'s)."""
    dtype = like.dtype if dtype is None else dtype
    return np.asarray(bias, dtype=dtype).reshape((-1,) + (1,) * (like.ndim - 1))


def _shift_seeds(
    seeds: np.ndarray | None, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray | None]:
    # mwatershed names unseeded clusters by voxel index (< number of voxels),
    # so seed values are moved above that range and restored afterwards.
    if seeds is None:
        return np.zeros(0, dtype=np.uint64), None
    seeds = np.asarray(seeds, dtype=np.uint64)
    if seeds.shape != shape:
        raise ValueError(f"seeds have shape {seeds.shape}, affinities {shape}")
    flat = seeds.ravel()
    values, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.ravel().astype(np.uint64)
    if values.size and values[0] == 0:
        values = values[1:]
        inverse = np.where(flat > 0, inverse - np.uint64(1), np.uint64(0))
    base = np.uint64(seeds.size + 1)
    shifted = np.where(flat > 0, base + inverse, np.uint64(0))
    return values, np.ascontiguousarray(shifted.reshape(shape), dtype=np.uint64)


def _compact_ids(
    raw: np.ndarray, seed_values: np.ndarray, base: np.uint64, keep_unseeded: bool
) -> np.ndarray:
    # raw ids at or above ``base`` are shifted seeds, 0 is no cluster, the
    # others voxel indices
    ids, inverse = np.unique(raw, return_inverse=True)
    seeded = ids >= base
    new_ids = np.zeros(ids.shape, dtype=np.uint64)
    new_ids[seeded] = seed_values[(ids[seeded] - base).astype(np.int64)]
    unseeded = ~seeded & (ids != 0)
    if keep_unseeded:
        first = int(seed_values.max()) + 1 if seed_values.size else 1
        new_ids[unseeded] = np.arange(
            first, first + int(unseeded.sum()), dtype=np.uint64
        )
    return new_ids[inverse.reshape(raw.shape)]


def direct_neighbor_channels(neighborhood: Sequence[Sequence[int]]) -> list[int]:
    """Channels whose offset steps one voxel along one axis; all channels if
    the neighborhood has none."""
    direct = [
        channel
        for channel, offset in enumerate(neighborhood)
        if sorted(abs(int(o)) for o in offset)[-1] == 1
        and sum(abs(int(o)) for o in offset) == 1
    ]
    return direct or list(range(len(neighborhood)))


def mean_affinities(affs: np.ndarray, inverse: np.ndarray, count: int) -> np.ndarray:
    """Per label, the mean of ``affs`` (channels first, averaged over
    channels per voxel) over its voxels; ``inverse`` maps each voxel (C
    order) to its label's index in ``0..count-1``."""
    per_voxel = affinities_as_float(affs).mean(axis=0).ravel()
    sums = np.bincount(inverse, weights=per_voxel, minlength=count)
    return sums / np.maximum(np.bincount(inverse, minlength=count), 1)


def remove_fragments(fragments: np.ndarray, remove: np.ndarray) -> np.ndarray:
    """``fragments`` with every id in ``remove`` set to 0."""
    if remove.size == 0:
        return fragments
    src, dst = sorted_mapping(remove, np.zeros(remove.size, dtype=np.uint64))
    return relabel(fragments, src, dst)


def filter_fragments(
    fragments: np.ndarray,
    affs: np.ndarray,
    min_mean_affinity: float = 0.0,
    min_size: int = 0,
    channels: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Remove fragments whose mean affinity (over ``channels``, default all)
    is below ``min_mean_affinity`` or that have fewer than ``min_size``
    voxels. Returns the filtered labels and the removed ids."""
    ids, inverse, sizes = np.unique(fragments, return_inverse=True, return_counts=True)
    drop = sizes < min_size
    if min_mean_affinity > 0:
        chosen = affs if channels is None else np.asarray(affs)[list(channels)]
        drop |= mean_affinities(chosen, inverse.ravel(), ids.size) < min_mean_affinity
    removed = ids[drop & (ids != 0)]
    return remove_fragments(fragments, removed), removed


class FragmentStats(NamedTuple):
    """Per fragment (sorted by id, 0 excluded), measured in voxel indices."""

    ids: np.ndarray
    """uint64 ids, sorted."""
    sizes: np.ndarray
    """Number of voxels."""
    centers: np.ndarray
    """``(n, ndim)`` mean voxel index (add 0.5 for the voxel-center position)."""
    first_voxels: np.ndarray
    """``(n, ndim)`` index of each fragment's first voxel in C order."""


def fragment_statistics(fragments: np.ndarray) -> FragmentStats:
    """Size, center of mass and first voxel of every non-zero label, in one
    weighted count per axis (and one sort of the volume, unless the labels
    are ``1..n`` numbered in C order of their first voxels, as
    `connected_pieces` numbers them)."""
    fragments = np.asarray(fragments)
    flat = fragments.ravel()
    first = _first_voxels_of_scan_ordered(flat)
    if first is not None:
        ids = np.arange(first.size + 1, dtype=np.uint64)
        inverse = flat.astype(np.intp, copy=False)
        sizes = np.bincount(inverse, minlength=ids.size)
        first = np.r_[0, first]
    else:
        ids, first, inverse, sizes = np.unique(
            flat, return_index=True, return_inverse=True, return_counts=True
        )
        inverse = inverse.ravel()
    centers = np.empty((ids.size, fragments.ndim), dtype=np.float64)
    for axis, length in enumerate(fragments.shape):
        view = [1] * fragments.ndim
        view[axis] = length
        coordinate = np.broadcast_to(np.arange(length).reshape(view), fragments.shape)
        centers[:, axis] = np.bincount(
            inverse, weights=coordinate.ravel(), minlength=ids.size
        )
    centers /= np.maximum(sizes, 1)[:, None]
    first_voxels = np.stack(np.unravel_index(first, fragments.shape), axis=1)
    keep = (ids != 0) & (sizes > 0)
    return FragmentStats(
        ids[keep].astype(np.uint64), sizes[keep], centers[keep], first_voxels[keep]
    )


def _first_voxels_of_scan_ordered(flat: np.ndarray) -> np.ndarray | None:
    """Where labels ``1..n`` first occur, if they are numbered in the order
    they first occur (each one then first shows up as a new running
    maximum); None for any other numbering."""
    if flat.size == 0 or not np.issubdtype(flat.dtype, np.integer):
        return None
    if flat.min() < 0:
        return None
    running = np.maximum.accumulate(flat)
    first = np.flatnonzero(running[1:] != running[:-1]) + 1
    if running[0] != 0:
        first = np.r_[0, first]
    if not np.array_equal(flat[first], np.arange(1, first.size + 1)):
        return None
    return first


def global_ids(
    first_voxels: np.ndarray, origin: Sequence[int], volume_shape: Sequence[int]
) -> np.ndarray:
    """Volume-wide fragment ids: 1 + the C-order index, in a volume of
    ``volume_shape`` voxels, of each fragment's first voxel (``first_voxels``
    are relative to ``origin``, the block's first voxel in the volume). Two
    fragments never share a first voxel, so ids are unique across blocks and
    the same on every rerun."""
    coordinates = np.asarray(first_voxels, dtype=np.int64) + np.asarray(
        origin, dtype=np.int64
    )
    if coordinates.size == 0:
        return np.zeros(0, dtype=np.uint64)
    flat = np.ravel_multi_index(
        tuple(coordinates.T), tuple(int(s) for s in volume_shape)
    )
    return flat.astype(np.uint64) + np.uint64(1)
