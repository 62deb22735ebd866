"""Mutex watershed on a region graph: fragments (nodes) to segments.

Edges carry a signed weight: positive pulls its fragments together,
negative keeps them apart. Edges are taken by decreasing ``|weight|``; a
positive edge merges its two segments unless a stronger negative edge
already separates them, a negative edge records that separation. Ties are
broken by ``(u, v)``, so the result does not depend on the order in which
edges were read.
"""

from __future__ import annotations

from collections.abc import Mapping

import mwatershed
import numpy as np


def weighted_edges(
    u: np.ndarray,
    v: np.ndarray,
    attrs: Mapping[str, np.ndarray],
    weights: Mapping[str, tuple[float, float]],
    edge_per_attr: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mutex watershed edges from edge attributes.

    Each attribute ``a`` with ``(w, b)`` in ``weights`` scores an edge
    ``w * a + b``; NaN values (missing attributes) are skipped. With
    ``edge_per_attr`` every score is its own edge, otherwise an edge's scores
    are summed into one edge (edges without any score are dropped).
    Returns ``(u, v, weight)``.
    """
    u = np.asarray(u, dtype=np.uint64)
    v = np.asarray(v, dtype=np.uint64)
    scores = [
        np.asarray(attrs[name], dtype=np.float64) * w + b
        for name, (w, b) in weights.items()
    ]
    if not scores:
        return u[:0], v[:0], np.zeros(0)
    if edge_per_attr:
        valid = [~np.isnan(s) for s in scores]
        return (
            np.concatenate([u[m] for m in valid]),
            np.concatenate([v[m] for m in valid]),
            np.concatenate([s[m] for s, m in zip(scores, valid, strict=True)]),
        )
    stacked = np.stack(scores)
    valid = ~np.all(np.isnan(stacked), axis=0)
    return u[valid], v[valid], np.nansum(stacked, axis=0)[valid]


def forced_merges(
    fragments: np.ndarray, segments: np.ndarray, nodes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Edges chaining together the fragments that a look-up table puts in
    one segment (only fragments listed in ``nodes``)."""
    fragments = np.asarray(fragments, dtype=np.uint64)
    segments = np.asarray(segments, dtype=np.uint64)
    keep = np.isin(fragments, nodes)
    fragments, segments = fragments[keep], segments[keep]
    order = np.lexsort((fragments, segments))
    fragments, segments = fragments[order], segments[order]
    same = segments[1:] == segments[:-1]
    return fragments[:-1][same], fragments[1:][same]


def mutex_watershed(
    nodes: np.ndarray, u: np.ndarray, v: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """The segment of every node of ``nodes``: the smallest fragment id in it.

    Nodes without edges are segments of their own. Edges with a NaN or zero
    weight, loops and edges to ids outside ``nodes`` are ignored; weights of
    ``+inf`` force a merge.
    """
    nodes = np.asarray(nodes, dtype=np.uint64)
    sorted_nodes = np.unique(nodes)
    low, high, weights = _dense_edges(sorted_nodes, u, v, weights)
    low, high, weights = strongest_per_pair(low, high, weights, sorted_nodes.size)
    clusters = mwatershed.cluster(
        list(zip((weights > 0).tolist(), low.tolist(), high.tolist(), strict=True))
    )
    segments = np.arange(sorted_nodes.size, dtype=np.int64)
    if clusters:
        pairs = np.array(clusters, dtype=np.int64).reshape(-1, 2)
        segments[pairs[:, 0]] = pairs[:, 1]
    segments = smallest_member(sorted_nodes, segments)
    return segments[np.searchsorted(sorted_nodes, nodes)]


def _dense_edges(
    sorted_nodes: np.ndarray, u: np.ndarray, v: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges between indices into ``sorted_nodes`` (low, high), without
    loops, unknown endpoints and NaN or zero weights."""
    weights = np.asarray(weights, dtype=np.float64)
    valid = ~np.isnan(weights) & (weights != 0)
    ends = []
    for ids in (u, v):
        index = node_index(sorted_nodes, np.asarray(ids, dtype=np.uint64))
        valid &= index >= 0
        ends.append(index)
    low, high = np.minimum(*ends), np.maximum(*ends)
    valid &= low != high
    return low[valid], high[valid], weights[valid]


def node_index(sorted_nodes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each id in ``sorted_nodes``, -1 where it is missing."""
    if sorted_nodes.size == 0:
        return np.full(ids.size, -1, dtype=np.int64)
    first, last = int(sorted_nodes[0]), int(sorted_nodes[-1])
    if last - first <= 4 * sorted_nodes.size + 2**20:
        # Ids are dense enough for a table: one random read per id instead
        # of a binary search (ten times faster for millions of edges).
        table = np.full(last - first + 1, -1, dtype=np.int64)
        table[(sorted_nodes - np.uint64(first)).astype(np.int64)] = np.arange(
            sorted_nodes.size
        )
        inside = (ids >= np.uint64(first)) & (ids <= np.uint64(last))
        index = np.full(ids.size, -1, dtype=np.int64)
        index[inside] = table[(ids[inside] - np.uint64(first)).astype(np.int64)]
        return index
    index = np.searchsorted(sorted_nodes, ids)
    index[index == sorted_nodes.size] = 0
    return np.where(sorted_nodes[index] == ids, index, -1).astype(np.int64)


def strongest_per_pair(
    low: np.ndarray, high: np.ndarray, weights: np.ndarray, num_nodes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The edges in processing order (``|weight|`` descending, ties by
    ``(low, high)``), keeping per pair only its strongest edge (the first one
    given among equals).

    Only that edge can change the result: when its turn comes, the pair is
    either merged (later edges between the two lie inside one segment) or
    kept apart for good (later merges of the two are refused).
    """
    if low.size == 0:
        return low, high, weights
    key = low * np.int64(num_nodes) + high
    order = np.argsort(key, kind="stable")
    key, strength = key[order], np.abs(weights[order])
    starts = np.ones(key.size, dtype=bool)
    starts[1:] = key[1:] != key[:-1]
    group = np.cumsum(starts) - 1
    strongest = np.maximum.reduceat(strength, np.flatnonzero(starts))
    candidates = np.flatnonzero(strength == strongest[group])
    first = np.ones(candidates.size, dtype=bool)
    first[1:] = group[candidates[1:]] != group[candidates[:-1]]
    chosen = order[candidates[first]]  # in (low, high) order
    chosen = chosen[np.argsort(-np.abs(weights[chosen]), kind="stable")]
    return low[chosen], high[chosen], weights[chosen]


def smallest_member(fragments: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Relabel each segment by the smallest fragment id it contains."""
    labels, group = np.unique(segments, return_inverse=True)
    smallest = np.full(labels.size, np.iinfo(np.uint64).max, dtype=np.uint64)
    np.minimum.at(smallest, group.ravel(), np.asarray(fragments, dtype=np.uint64))
    return smallest[group.ravel()]


def size_weighted_means(
    segments: np.ndarray, sizes: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per segment: its id, total size and ``sum(value * size) / sum(size)``.

    ``values`` has one row per fragment (a scalar or a vector each).
    Segments of total size 0 get NaN means.
    """
    labels, group = np.unique(
        np.asarray(segments, dtype=np.uint64), return_inverse=True
    )
    group = group.ravel()
    sizes = np.asarray(sizes, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    # not reshape(n, -1): no fragments (a block without any) has no -1
    flat = values.reshape(values.shape[0], int(np.prod(values.shape[1:])))
    totals = np.bincount(group, sizes, minlength=labels.size)
    sums = np.stack(
        [
            np.bincount(group, flat[:, i] * sizes, minlength=labels.size)
            for i in range(flat.shape[1])
        ],
        axis=1,
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / totals[:, None]
    return labels, totals, means.reshape((labels.size, *values.shape[1:]))


def interior_segments(
    nodes: np.ndarray, segments: np.ndarray, interior: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The segments a block keeps: ``(fragments, segment ids)`` of the
    ``interior`` nodes, each segment named by the smallest interior fragment
    it contains.

    ``segments`` comes from a watershed over the block and its context; the
    part of a segment lying in the context belongs to other blocks, which
    decide it themselves. Interior fragments tile the volume, so the ids are
    unique across blocks.
    """
    fragments = np.asarray(nodes, dtype=np.uint64)[interior]
    if fragments.size == 0:
        return fragments, fragments.copy()
    return fragments, smallest_member(fragments, np.asarray(segments)[interior])


def mean_positions(
    segments: np.ndarray, sizes: np.ndarray, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per segment: id, total size and the size-weighted mean position.

    A segment whose fragments have no size (NaN or 0) is placed at the plain
    mean of their positions, so that every segment has a position to be
    found by spatial queries.
    """
    sizes = np.nan_to_num(np.asarray(sizes, dtype=np.float64), nan=0.0)
    ids, totals, means = size_weighted_means(segments, sizes, positions)
    unsized = totals <= 0
    if unsized.any():
        _, _, plain = size_weighted_means(segments, np.ones_like(sizes), positions)
        means[unsized] = plain[unsized]
    return ids, totals, means


def combined_edges(
    u: np.ndarray,
    v: np.ndarray,
    means: Mapping[str, np.ndarray],
    counts: Mapping[str, np.ndarray],
    lows: Mapping[str, np.ndarray],
    highs: Mapping[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, np.ndarray]]]:
    """Join edges between the same pair into one edge per pair.

    Each attribute ``a`` is a mean over ``counts[a]`` observations (e.g. the
    mean affinity over that many voxel contacts), with ``lows[a]`` and
    ``highs[a]`` the smallest and largest values it summarizes (for a plain
    edge, the mean itself). Per pair and attribute the joined edge has
    ``"mean"``: ``sum(mean * count) / sum(count)`` over the edges with a
    value, i.e. the mean over all their observations; ``"count"``: their
    sum; ``"low"``/``"high"``: the extremes. NaN means (no value) are left
    out; a pair without any value gets NaN and count 0. Loops (``u == v``)
    are dropped; pairs come out as ``(min, max)``, sorted. Returns ``(u, v,
    {attribute: {"mean", "count", "low", "high"}})``.
    """
    u = np.asarray(u, dtype=np.uint64)
    v = np.asarray(v, dtype=np.uint64)
    keep = u != v
    low_end, high_end = np.minimum(u, v)[keep], np.maximum(u, v)[keep]
    if low_end.size == 0:
        empty = np.zeros(0, dtype=np.uint64)
        parts = ("mean", "count", "low", "high")
        return empty, empty.copy(), {a: {k: np.zeros(0) for k in parts} for a in means}
    pairs, group = np.unique(
        np.stack([low_end, high_end], axis=1), axis=0, return_inverse=True
    )
    group = group.ravel()
    starts = _group_starts(group)
    order = np.argsort(group, kind="stable")
    joined = {}
    for name, values in means.items():
        values = np.asarray(values, dtype=np.float64)[keep]
        has_value = ~np.isnan(values)
        weights = np.where(has_value, np.asarray(counts[name], np.float64)[keep], 0.0)
        total = np.bincount(group, weights, minlength=len(pairs))
        sums = np.bincount(
            group, np.where(has_value, values * weights, 0.0), minlength=len(pairs)
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(total > 0, sums / total, np.nan)
        low = np.asarray(lows[name], np.float64)[keep][order]
        high = np.asarray(highs[name], np.float64)[keep][order]
        with np.errstate(invalid="ignore"):
            joined[name] = {
                "mean": mean,
                "count": total,
                "low": np.fmin.reduceat(low, starts),
                "high": np.fmax.reduceat(high, starts),
            }
    return pairs[:, 0].copy(), pairs[:, 1].copy(), joined


def _group_starts(group: np.ndarray) -> np.ndarray:
    """Where each group starts among the items sorted by group (every group
    from 0 to ``group.max()`` has at least one item)."""
    sizes = np.bincount(group)
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
