"""Statistics of the contacts between fragments, for building region graphs.

Fragments are a label array (0 is background). Two voxels ``x`` and
``x + offset`` form a *contact* of the fragments ``u`` and ``v`` they belong
to when both are non-zero and different. Affinities are channels first, one
channel per offset of a neighborhood; the value of channel ``i`` at ``x`` is
the affinity between ``x`` and ``x + neighborhood[i]``.

Pairs are always returned with ``u < v``, sorted by ``(u, v)``.

A *count box* ``(begin, end)`` in voxel indices of the array restricts the
contacts to those whose first voxel ``x`` lies in ``begin <= x < end``.
Blocks that each pass their own write region as the count box count every
contact of the whole volume exactly once, even where it crosses a block face.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from .affinities import offset_slices

CountBox = tuple[Sequence[int], Sequence[int]]


def _count_box_mask(
    offset: Sequence[int], shape: Sequence[int], count_box: CountBox | None
) -> np.ndarray | None:
    """Which of the first voxels of ``offset_slices`` lie in the count box."""
    if count_box is None:
        return None
    begin, end = count_box
    first, _ = offset_slices(shape, offset)
    axes = []
    for sl, low, high in zip(first, begin, end, strict=True):
        index = np.arange(sl.start, sl.stop)
        axes.append((index >= low) & (index < high))
    mask = axes[0]
    for axis in axes[1:]:
        mask = np.logical_and.outer(mask, axis)
    return mask


def contacts(
    fragments: np.ndarray,
    offset: Sequence[int],
    count_box: CountBox | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The contacts of ``fragments`` along one ``offset``.

    Returns ``(u, v, index)``: per contact the smaller and larger fragment id
    (uint64) and the flat index (into ``fragments``) of its first voxel ``x``.
    """
    fragments = np.asarray(fragments)
    first, second = offset_slices(fragments.shape, offset)
    a, b = fragments[first], fragments[second]
    mask = (a != b) & (a != 0) & (b != 0)
    box = _count_box_mask(offset, fragments.shape, count_box)
    if box is not None:
        mask &= box
    a, b = a[mask].astype(np.uint64), b[mask].astype(np.uint64)
    coords = np.nonzero(mask)
    coords = tuple(c + (sl.start or 0) for c, sl in zip(coords, first, strict=True))
    index = np.ravel_multi_index(coords, fragments.shape)
    return np.minimum(a, b), np.maximum(a, b), index


def _pair_index(
    u: np.ndarray, v: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique ``(u, v)`` pairs sorted by ``(u, v)``, and per input its pair."""
    if u.size == 0:
        empty = np.zeros(0, dtype=np.uint64)
        return empty, empty.copy(), np.zeros(0, dtype=np.int64)
    # Dense ids keep the combined key ``u * n + v`` far below 2**63.
    ids, dense = np.unique(np.concatenate([u, v]), return_inverse=True)
    n = np.int64(ids.size)
    key = dense[: u.size].astype(np.int64) * n + dense[u.size :].astype(np.int64)
    keys, inverse = np.unique(key, return_inverse=True)
    return ids[keys // n], ids[keys % n], inverse.ravel()


def adjacent_pairs(
    fragments: np.ndarray, count_box: CountBox | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of fragments touching across a face (offsets of one voxel
    along each axis), as ``(u, v)`` arrays with ``u < v``."""
    ndim = np.asarray(fragments).ndim
    found_u, found_v = [], []
    for axis in range(ndim):
        offset = [0] * ndim
        offset[axis] = 1
        u, v, _ = contacts(fragments, offset, count_box)
        found_u.append(u)
        found_v.append(v)
    pairs_u, pairs_v, _ = _pair_index(np.concatenate(found_u), np.concatenate(found_v))
    return pairs_u, pairs_v


def mean_affinities(
    fragments: np.ndarray,
    affinities: np.ndarray,
    neighborhood: Sequence[Sequence[int]],
    score_groups: Mapping[str, Sequence[Sequence[int]]],
    count_box: CountBox | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Mean affinity over the contacts of every fragment pair, per group.

    ``affinities`` has shape ``(len(neighborhood), *fragments.shape)``; each
    group of ``score_groups`` names offsets of ``neighborhood``. Returns
    ``(u, v, means)``: all pairs in contact along any offset of any group,
    and per group name a float64 array of the mean affinity over that pair's
    contacts along the group's offsets. A pair without contacts along a
    group's offsets gets NaN in that group.
    """
    u, v, means, _ = affinity_statistics(
        fragments, affinities, neighborhood, score_groups, count_box
    )
    return u, v, means


def affinity_statistics(
    fragments: np.ndarray,
    affinities: np.ndarray,
    neighborhood: Sequence[Sequence[int]],
    score_groups: Mapping[str, Sequence[Sequence[int]]],
    count_box: CountBox | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`mean_affinities` and, per group, how many contacts each mean is
    over (0 where it is NaN): ``(u, v, means, counts)``."""
    channels = _group_channels(neighborhood, score_groups)
    used = sorted({c for group in channels.values() for c in group})
    ids, dense = dense_labels(fragments)
    if not used or ids.size < 2:
        empty = np.zeros(0, dtype=np.uint64)
        nothing = {name: np.zeros(0) for name in score_groups}
        return empty, empty.copy(), nothing, dict(nothing)
    keys, values = {}, {}
    for channel in used:
        keys[channel], values[channel] = _channel_contacts(
            dense, ids.size, affinities[channel], neighborhood[channel], count_box
        )
    pairs, pair_of = _pair_keys(keys, used, ids.size)
    means, counts_of = {}, {}
    for name, group in channels.items():
        # contacts in channel order, as concatenated for every group alike:
        # the sums then do not depend on how the pairs were indexed
        in_group = [channel for channel in used if channel in group]
        index = np.concatenate([pair_of[channel] for channel in in_group])
        weights = np.concatenate([values[channel] for channel in in_group])
        sums = np.bincount(index, weights, minlength=pairs.size)
        counts = np.bincount(index, minlength=pairs.size)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[name] = np.where(counts > 0, sums / counts, np.nan)
        counts_of[name] = counts.astype(np.float64)
    n = np.int64(ids.size - 1)
    return ids[pairs // n + 1], ids[pairs % n + 1], means, counts_of


def dense_labels(fragments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, dense)``: ``ids[0] == 0`` then the sorted non-zero labels;
    ``dense`` has the shape of ``fragments`` and holds each voxel's index in
    ``ids`` (0 for background).

    Label arrays are long runs of one value, so only the first value of each
    run is looked up: a few linear passes instead of sorting every voxel.
    """
    flat = np.asarray(fragments).ravel()
    if flat.size == 0:
        return np.zeros(1, dtype=np.uint64), np.zeros(np.shape(fragments), np.int32)
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    run_values = flat[starts].astype(np.uint64)
    labels = np.unique(run_values)
    ids = np.concatenate([[np.uint64(0)], labels[labels != 0]]).astype(np.uint64)
    index_type = np.int32 if ids.size < 2**31 else np.int64
    run_index = np.searchsorted(ids, run_values).astype(index_type)
    lengths = np.diff(np.append(starts, flat.size))
    return ids, np.repeat(run_index, lengths).reshape(np.shape(fragments))


def _channel_contacts(
    dense: np.ndarray,
    num_ids: int,
    affinities: np.ndarray,
    offset: Sequence[int],
    count_box: CountBox | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per contact along ``offset`` (in C order of its first voxel): the pair
    key ``(u - 1) * (num_ids - 1) + (v - 1)`` of the dense ids ``u < v``, and
    the affinity in its own dtype (``np.bincount`` reads weights as float64,
    exactly as ``astype`` would; keeping them narrow halves the memory)."""
    first, second = offset_slices(dense.shape, offset)
    a, b = dense[first], dense[second]
    mask = (a != b) & (a != 0) & (b != 0)
    box = _count_box_mask(offset, dense.shape, count_box)
    if box is not None:
        mask &= box
    a, b = a[mask].astype(np.int64), b[mask].astype(np.int64)
    keys = (np.minimum(a, b) - 1) * np.int64(num_ids - 1) + np.maximum(a, b) - 1
    return keys, np.asarray(affinities)[first][mask]


BINCOUNT_MAX_PAIRS = 2**22
"""Up to this many possible pairs (squared number of fragments in a block),
pairs are found by counting keys in a table; above, by sorting them."""


def _pair_keys(
    keys: dict[int, np.ndarray], used: list[int], num_ids: int
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The sorted distinct pair keys and, per channel, each contact's index
    into them."""
    n = num_ids - 1
    if n * n <= BINCOUNT_MAX_PAIRS:
        present = np.zeros(n * n, dtype=bool)
        for channel in used:
            present[keys[channel]] = True
        pairs = np.flatnonzero(present)
        position = np.cumsum(present, dtype=np.int64) - 1
        return pairs, {c: position[keys[c]] for c in used}
    pairs, inverse = np.unique(
        np.concatenate([keys[c] for c in used]), return_inverse=True
    )
    split = np.cumsum([keys[c].size for c in used])[:-1]
    return pairs, dict(zip(used, np.split(inverse.ravel(), split), strict=True))


def _group_channels(
    neighborhood: Sequence[Sequence[int]],
    score_groups: Mapping[str, Sequence[Sequence[int]]],
) -> dict[str, list[int]]:
    """The affinity channel of every offset of every group."""
    channel_of = {
        tuple(int(c) for c in offset): i for i, offset in enumerate(neighborhood)
    }
    channels = {}
    for name, offsets in score_groups.items():
        group = []
        for offset in offsets:
            key = tuple(int(c) for c in offset)
            if key not in channel_of:
                raise ValueError(
                    f"score {name!r}: offset {key} is not in the neighborhood "
                    f"{sorted(channel_of)}"
                )
            group.append(channel_of[key])
        channels[name] = group
    return channels


def pair_distances(
    u: np.ndarray, v: np.ndarray, ids: np.ndarray, positions: np.ndarray
) -> np.ndarray:
    """Euclidean distance between the positions of ``u`` and ``v``.

    ``positions[i]`` is the position of node ``ids[i]``; pairs with an
    endpoint missing from ``ids`` get NaN.
    """
    pos_u, found_u = lookup_rows(u, ids, positions)
    pos_v, found_v = lookup_rows(v, ids, positions)
    distances = (
        np.linalg.norm(pos_u - pos_v, axis=1) if pos_u.size else np.zeros(len(u))
    )
    return np.where(found_u & found_v, distances, np.nan)


def lookup_rows(
    keys: np.ndarray, ids: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``rows[i]`` for each key equal to ``ids[i]`` (``ids`` need not be
    sorted), and whether each key was found; missing keys get NaN rows."""
    keys = np.asarray(keys, dtype=np.uint64)
    ids = np.asarray(ids, dtype=np.uint64)
    rows = np.asarray(rows, dtype=np.float64)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    where = np.searchsorted(sorted_ids, keys)
    where[where == sorted_ids.size] = 0
    found = sorted_ids[where] == keys if sorted_ids.size else np.zeros(keys.size, bool)
    out = np.full((keys.size, *rows.shape[1:]), np.nan)
    if sorted_ids.size:
        out[found] = rows[order[where[found]]]
    return out, found


def embedding_similarities(
    emb_u: np.ndarray, emb_v: np.ndarray, metric: str, eps: float = 1e-8
) -> np.ndarray:
    """Similarity between rows of two ``(n, k)`` embedding arrays: larger is
    more alike.

    ``"cosine"``: the cosine of the angle, in [-1, 1] (the product of the
    norms floored at ``eps``); ``"euclidean"``: minus the Euclidean norm of
    the difference; ``"max"``: minus the largest absolute difference of one
    component. NaN components give NaN.
    """
    emb_u = np.asarray(emb_u, dtype=np.float64)
    emb_v = np.asarray(emb_v, dtype=np.float64)
    if metric == "cosine":
        norms = np.linalg.norm(emb_u, axis=1) * np.linalg.norm(emb_v, axis=1)
        return np.einsum("ij,ij->i", emb_u, emb_v) / np.maximum(norms, eps)
    if metric == "euclidean":
        return -np.linalg.norm(emb_u - emb_v, axis=1)
    if metric == "max":
        return -np.max(np.abs(emb_u - emb_v), axis=1, initial=0.0)
    raise ValueError(f"metric must be 'cosine', 'euclidean' or 'max', got {metric!r}")


def boundary_mask(fragments: np.ndarray) -> np.ndarray:
    """The non-zero voxels with a face neighbour (inside the array) of
    another value, background included."""
    fragments = np.asarray(fragments)
    mask = np.zeros(fragments.shape, dtype=bool)
    for axis in range(fragments.ndim):
        offset = [0] * fragments.ndim
        offset[axis] = 1
        first, second = offset_slices(fragments.shape, offset)
        differ = fragments[first] != fragments[second]
        mask[first] |= differ
        mask[second] |= differ
    return mask & (fragments != 0)


def fragment_distances(
    fragments: np.ndarray,
    voxel_size: Sequence[float],
    max_distance: float,
    sources: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fragment pairs whose voxels come within ``max_distance`` of each
    other, and the smallest such distance.

    Distances are between voxel centers, in the units of ``voxel_size``
    (one value per axis); a pair is kept when its squared distance is at most
    ``max_distance ** 2``. Returns ``(u, v, distance)`` with ``u < v``,
    sorted by ``(u, v)``; with ``sources``, only the pairs whose ``u`` is one
    of them.

    Per source fragment, one Euclidean distance transform of its bounding
    box grown by ``max_distance`` finds, for every boundary voxel of a larger
    id there, its nearest voxel of the source (the closest voxels of two
    fragments always lie on their boundaries, `boundary_mask`); squared
    distances are then recomputed exactly from the voxel indices.
    """
    fragments = np.asarray(fragments)
    scale = np.asarray(voxel_size, dtype=np.float64)
    limit = float(max_distance) ** 2
    ids, dense = dense_labels(fragments)
    boundary = np.where(boundary_mask(fragments), dense, 0)
    boxes = ndimage.find_objects(boundary)
    margin = np.floor(max(float(max_distance), 0.0) / scale).astype(np.int64)
    wanted = np.arange(1, ids.size)
    if sources is not None:
        wanted = wanted[np.isin(ids[1:], np.asarray(sources, dtype=np.uint64))]
    found_u, found_v, found_d2 = [], [], []
    for label in wanted.tolist():
        box = boxes[label - 1] if label <= len(boxes) else None
        if box is None:
            continue
        grown = tuple(
            slice(max(sl.start - m, 0), min(sl.stop + m, size))
            for sl, m, size in zip(box, margin.tolist(), fragments.shape, strict=True)
        )
        crop = boundary[grown]
        others = np.nonzero(crop > label)
        if others[0].size == 0:
            continue
        nearest = ndimage.distance_transform_edt(
            crop != label, sampling=scale, return_distances=False, return_indices=True
        )
        d2 = np.zeros(others[0].size)
        for axis, index in enumerate(others):
            d2 += ((nearest[axis][others] - index) * scale[axis]) ** 2
        close = d2 <= limit
        partner, d2 = crop[others][close], d2[close]
        order = np.lexsort((d2, partner))
        partner, d2 = partner[order], d2[order]
        first = np.ones(partner.size, dtype=bool)
        first[1:] = partner[1:] != partner[:-1]
        found_v.append(partner[first])
        found_d2.append(d2[first])
        found_u.append(np.full(int(first.sum()), label))
    if not found_u:
        empty = np.zeros(0, dtype=np.uint64)
        return empty, empty.copy(), np.zeros(0)
    u, v = np.concatenate(found_u), np.concatenate(found_v)
    d2 = np.concatenate(found_d2)
    order = np.lexsort((v, u))
    return ids[u[order]], ids[v[order]], np.sqrt(d2[order])
