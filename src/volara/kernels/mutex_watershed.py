"""Fragments from affinities by mutex watershed, and what is measured on them.

`mutex_watershed` is the one implementation behind `ExtractFrags` and
`SeededExtractFrags`. It wraps `mwatershed.agglom`, whose raw cluster ids are
voxel indices (so 0 can name a real cluster, and an unseeded cluster's id can
equal a seed's value); the wrapper keeps seeds apart from those ids and
returns labels where 0 is never a fragment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import mwatershed
import numpy as np
from scipy.ndimage import gaussian_filter

from .affinities import pair_mask
from .relabel import relabel, sorted_mapping


def affinities_as_float(affs: np.ndarray) -> np.ndarray:
    """Affinities as float64 in [0, 1]: integer arrays (e.g. uint8 0..255)
    are divided by their dtype's maximum, float arrays are only converted."""
    affs = np.asarray(affs)
    if np.issubdtype(affs.dtype, np.integer):
        return affs.astype(np.float64) / np.iinfo(affs.dtype).max
    if affs.dtype == np.bool_:
        return affs.astype(np.float64)
    return affs.astype(np.float64)


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
    """Split a volume into fragments with the mutex watershed.

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
        keep_unseeded: With seeds, whether fragments without a seed are kept
            (as new ids above the largest seed) or set to 0.
        origin: Voxel coordinates of ``affs[:, 0, 0, 0]`` in the whole
            volume. If given, edges of equal weight are ordered by a tiny
            jitter computed from these global coordinates, so a block and
            the whole volume order them alike (see `add_tie_break_jitter`;
            it makes mwatershed's sort about 1.45x slower).
        crop: Spatial slices of the labels to return (e.g. a block without
            its context); only these are numbered, which saves a sort of
            the context's voxels.

    Returns uint64 labels of the spatial shape (or of ``crop``). Without seeds, fragments are
    numbered ``1..n``; 0 only marks masked voxels.
    """
    weights = _edge_weights(
        affs, neighborhood, bias, mask, sigma, noise_eps, noise_seed
    )
    if origin is not None:
        add_tie_break_jitter(weights, origin)
    seed_values, shifted_seeds = _shift_seeds(seeds, weights.shape[1:])
    raw = mwatershed.agglom(
        weights,
        [[int(o) for o in offset] for offset in neighborhood],
        seeds=shifted_seeds,
        strides=None if strides is None else [[int(s) for s in st] for st in strides],
        randomized_strides=randomized_strides,
    )
    raw = np.asarray(raw, dtype=np.uint64)
    seed_base = np.uint64(raw.size + 1)  # as in _shift_seeds
    crop = crop if crop is not None else (slice(None),) * raw.ndim
    labels = _compact_ids(raw[crop], seed_values, seed_base, keep_unseeded)
    if mask is not None:
        labels[~np.asarray(mask, dtype=bool)[crop]] = 0
    return labels


def _edge_weights(
    affs, neighborhood, bias, mask, sigma, noise_eps, noise_seed
) -> np.ndarray:
    affs = np.asarray(affs)
    if affs.shape[0] != len(neighborhood) or len(bias) != len(neighborhood):
        raise ValueError(
            f"{affs.shape[0]} affinity channels, {len(neighborhood)} offsets and "
            f"{len(bias)} biases: need one of each per channel"
        )
    weights = affinities_as_float(affs)
    if sigma is not None:
        weights = gaussian_filter(weights, (0, *sigma))
    if noise_eps:
        rng = np.random.default_rng(noise_seed)
        weights += rng.standard_normal(weights.shape) * noise_eps
    if mask is not None:
        weights[~pair_mask(mask, neighborhood)] = 0.0
    weights += np.asarray(bias, dtype=np.float64).reshape(
        (-1,) + (1,) * (weights.ndim - 1)
    )
    return weights


TIE_BREAK_SCALE = 1e-7
"""Largest jitter per axis: far below any affinity step that matters (an
8-bit affinity step is 4e-3), far above float64 resolution (1e-16)."""


def add_tie_break_jitter(
    weights: np.ndarray, origin: Sequence[int] | None = None
) -> None:
    """Add a tiny, position-dependent offset to every edge weight, in place.

    mwatershed sorts edges with an unstable sort, so edges of equal weight
    (common: clipped or 8-bit affinities) are taken in an order that depends
    on the array's extent, and a block cut from a volume can grow different
    fragments than the whole volume does. A jitter that is a function of the
    global position only (one hashed value per channel and per coordinate
    along each axis, summed) gives every crop the same order. ``weights`` is
    channels first; ``origin`` is the voxel coordinate of its first voxel.
    """
    shape = weights.shape
    origin = (0,) * (len(shape) - 1) if origin is None else tuple(origin)
    starts = (0, *(int(o) for o in origin))
    # all axes but the last summed on a small array, then two passes over
    # the weights instead of one per axis
    leading = np.zeros((*shape[:-1], 1))
    for axis in range(len(shape) - 1):
        leading += _axis_jitter(shape, axis, starts[axis])
    weights += leading
    weights += _axis_jitter(shape, len(shape) - 1, starts[-1])


def _axis_jitter(shape: tuple[int, ...], axis: int, start: int) -> np.ndarray:
    coordinates = np.arange(start, start + shape[axis], dtype=np.int64)
    values = _hash_to_unit(coordinates, salt=axis) * TIE_BREAK_SCALE
    return values.reshape((1,) * axis + (shape[axis],) + (1,) * (len(shape) - axis - 1))


def _hash_to_unit(values: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of ``values`` (mixed with ``salt``) as floats in [0, 1)."""
    increment = np.uint64((0x9E3779B97F4A7C15 * (salt + 1)) % 2**64)
    x = values.astype(np.uint64) + increment
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


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
    # raw ids at or above ``base`` are shifted seeds, the others voxel indices
    ids, inverse = np.unique(raw, return_inverse=True)
    seeded = ids >= base
    new_ids = np.zeros(ids.shape, dtype=np.uint64)
    new_ids[seeded] = seed_values[(ids[seeded] - base).astype(np.int64)]
    if keep_unseeded:
        first = int(seed_values.max()) + 1 if seed_values.size else 1
        new_ids[~seeded] = np.arange(
            first, first + int((~seeded).sum()), dtype=np.uint64
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
    sort of the volume and one weighted count per axis."""
    fragments = np.asarray(fragments)
    flat = fragments.ravel()
    ids, first, inverse, sizes = np.unique(
        flat, return_index=True, return_inverse=True, return_counts=True
    )
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
    keep = ids != 0
    return FragmentStats(ids[keep], sizes[keep], centers[keep], first_voxels[keep])


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
