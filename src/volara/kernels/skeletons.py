"""Skeletons (graphs of points) turned into labels: one id per skeleton,
painted into a voxel grid as seeds."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence

import networkx as nx
import numpy as np


def component_labels(
    nodes: Iterable[Hashable], edges: Iterable[tuple[Hashable, Hashable]]
) -> dict[Hashable, int]:
    """Label every node by its connected component: ``1..k``, numbered by
    the smallest node id of each component, so the labels depend only on
    the graph (not on the order it was read in)."""
    graph = nx.Graph()
    graph.add_nodes_from(nodes)
    graph.add_edges_from(edges)
    components = sorted(nx.connected_components(graph), key=min)
    return {
        node: label for label, members in enumerate(components, 1) for node in members
    }


def skeleton_labels(
    nodes: Iterable[Hashable],
    edges: Iterable[tuple[Hashable, Hashable]],
    ids: Mapping[Hashable, int],
) -> dict[Hashable, int]:
    """Label every node by the skeleton id it carries, as volara 1.0.5 did.

    ``ids`` holds the ids (integers > 0) of the nodes that have one. Then:

    - a node with an id is labelled with it. Components sharing an id get
      the same label (one object whose skeleton is in pieces); a component
      whose nodes carry several ids keeps them all;
    - a node without an id takes the id of its connected component when
      that component's nodes carry exactly one id;
    - the other nodes (in components without ids, or with several) get a new
      label per component, ``m + 1, m + 2, ...`` above the largest id ``m``
      (0 if none), numbered by each component's smallest node id.

    Without any ids this is `component_labels`: ``1..k`` per component.
    """
    graph = nx.Graph()
    graph.add_nodes_from(nodes)
    graph.add_edges_from(edges)
    labels = {node: int(ids[node]) for node in graph if node in ids}
    next_label = max(labels.values(), default=0)
    for members in sorted(nx.connected_components(graph), key=min):
        unlabelled = [node for node in members if node not in labels]
        if not unlabelled:
            continue
        found = {labels[node] for node in members if node in labels}
        if len(found) == 1:
            (label,) = found
        else:
            next_label += 1
            label = next_label
        labels.update(dict.fromkeys(unlabelled, label))
    return labels


def rasterize_skeletons(
    shape: Sequence[int],
    points: np.ndarray,
    labels: np.ndarray,
    edges: np.ndarray | None = None,
) -> np.ndarray:
    """Paint skeletons into a uint64 volume of ``shape`` (0 elsewhere).

    Args:
        shape: Volume shape in voxels.
        points: ``(n, ndim)`` node positions in voxel units relative to the
            volume's first voxel (voxel ``i`` covers ``[i, i + 1)``); nodes
            outside the volume are skipped.
        labels: ``(n,)`` the label of each node (non-zero).
        edges: ``(m, 2)`` indices into ``points`` of connected nodes; every
            voxel on the straight line between them gets the label of the
            first node. ``None``: only the nodes are painted.

    Where skeletons of different labels cross, the later one wins.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, len(shape))
    labels = np.asarray(labels, dtype=np.uint64)
    samples, sample_labels = points, labels
    if edges is not None and len(edges):
        edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
        along, along_labels = _sample_segments(points, labels, edges)
        samples = np.concatenate([along, points])
        sample_labels = np.concatenate([along_labels, labels])
    seeds = np.zeros(tuple(shape), dtype=np.uint64)
    voxels = np.floor(samples).astype(np.int64)
    inside = np.all((voxels >= 0) & (voxels < np.asarray(shape)), axis=1)
    seeds[tuple(voxels[inside].T)] = sample_labels[inside]
    return seeds


def _sample_segments(
    points: np.ndarray, labels: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    # Sampling at least once per voxel step along the longest axis touches
    # every voxel of the line.
    start, end = points[edges[:, 0]], points[edges[:, 1]]
    steps = np.ceil(np.abs(end - start).max(axis=1)).astype(np.int64) + 1
    edge_of_sample = np.repeat(np.arange(len(edges)), steps)
    first_sample = np.cumsum(steps) - steps
    position = np.arange(steps.sum()) - np.repeat(first_sample, steps)
    fraction = position / np.maximum(np.repeat(steps, steps) - 1, 1)
    delta = (end - start)[edge_of_sample]
    samples = start[edge_of_sample] + fraction[:, None] * delta
    return samples, labels[edges[edge_of_sample, 0]]
