"""A synthetic fragment graph with a known truth, for the tests of blockwise
and hierarchical GraphMWS, and what those tests compute from it by brute
force (segment sizes, positions and edges; VOI between look-up tables).

The graph: fragments on a cubic lattice (one per cell of `SPACING` world
units, jittered inside the cell), each belonging to the truth object whose
random seed point is nearest (a Voronoi partition). Neighbouring fragments
(faces and the in-plane diagonals) share an edge whose ``aff`` is 0.8 inside
an object and 0.2 across objects, plus Gaussian noise, clipped to [0, 1].
Fragment ids are a random permutation with gaps, so that "the smallest id
of a segment" has nothing to do with where the segment lies, and sizes are
random, so that size weighting matters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from funlib.geometry import Roi

from volara.dbs import DB
from volara.graph_tables import read_edge_columns, read_node_columns, write_edge_rows
from volara.kernels.metrics import segmentation_scores

SPACING = 4
"""World units between lattice points."""
WEIGHTS = {"aff": (1.0, -0.5)}
"""An affinity above 0.5 merges."""
OFFSETS = [(0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 1, 1), (1, 1, 0), (1, 0, 1)]


@dataclass
class FragmentGraph:
    ids: np.ndarray
    """uint64, one per fragment."""
    positions: np.ndarray
    """(n, 3) world units."""
    sizes: np.ndarray
    """int64, voxels per fragment."""
    truth: np.ndarray
    """The true object of each fragment (from 1)."""
    u: np.ndarray
    v: np.ndarray
    aff: np.ndarray
    """Mean affinity of each edge."""
    counts: np.ndarray | None
    """``aff__size`` of each edge (voxel contacts the mean is over), or
    ``None`` for a graph without counts."""
    roi: Roi

    @property
    def edge_attrs(self) -> dict[str, str]:
        attrs = {"aff": "float"}
        return attrs if self.counts is None else {**attrs, "aff__size": "float"}


def lattice_graph(
    side: int,
    noise: float,
    seed: int,
    objects: int = 30,
    with_counts: bool = False,
) -> FragmentGraph:
    """A ``side**3`` lattice of fragments in `objects` truth objects (see
    the module docstring); ``noise`` is the standard deviation added to the
    affinities; ``with_counts`` gives each edge a random count (1 to 20)."""
    rng = np.random.default_rng(seed)
    cells = np.stack(
        np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), axis=-1
    ).reshape(-1, 3)
    seeds = rng.uniform(0, side, (objects, 3))
    distances = ((cells[:, None, :] + 0.5 - seeds[None]) ** 2).sum(axis=-1)
    truth = np.argmin(distances, axis=1) + 1
    positions = (cells + rng.uniform(0.05, 0.95, cells.shape)) * SPACING
    ids = rng.permutation(side**3 * 3)[: side**3].astype(np.uint64) + np.uint64(1)
    index = np.arange(side**3).reshape((side,) * 3)
    ends = []
    for offset in OFFSETS:
        stop = tuple(side - o for o in offset)
        ends.append(
            (
                index[: stop[0], : stop[1], : stop[2]].ravel(),
                index[offset[0] :, offset[1] :, offset[2] :].ravel(),
            )
        )
    first = np.concatenate([a for a, _ in ends])
    second = np.concatenate([b for _, b in ends])
    same = truth[first] == truth[second]
    aff = np.clip(np.where(same, 0.8, 0.2) + rng.normal(0, noise, first.size), 0.0, 1.0)
    # stored as (smaller id, larger id), as undirected graphs are; with
    # random ids, u lies on either side of v
    u = np.minimum(ids[first], ids[second])
    v = np.maximum(ids[first], ids[second])
    counts = rng.integers(1, 21, first.size).astype(np.float64)
    return FragmentGraph(
        ids=ids,
        positions=positions,
        sizes=rng.integers(1, 10, side**3),
        truth=truth,
        u=u,
        v=v,
        aff=aff,
        counts=counts if with_counts else None,
        roi=Roi((0, 0, 0), (side * SPACING,) * 3),
    )


def write_graph(graph: FragmentGraph, db: DB) -> DB:
    """Write ``graph`` into a fresh database of ``db``'s kind and place,
    returning its config (with the graph's edge attributes)."""
    db = db.model_copy(update={"edge_attrs": graph.edge_attrs})
    db.drop()
    db.init()
    graph_db = db.open("r+")
    try:
        graph_db.write_nodes(
            {
                int(i): {"position": tuple(p), "size": int(s), "filtered": False}
                for i, p, s in zip(
                    graph.ids.tolist(),
                    graph.positions.tolist(),
                    graph.sizes.tolist(),
                    strict=True,
                )
            }
        )
        columns = {"aff": graph.aff}
        if graph.counts is not None:
            columns["aff__size"] = graph.counts
        write_edge_rows(graph_db, graph.u, graph.v, columns)
    finally:
        graph_db.close()
    return db


def read_graph(db: DB, edge_attrs: list[str]) -> tuple[dict, dict]:
    """All nodes (``id``, ``position``, ``size``) and edges (``u``, ``v``,
    ``edge_attrs``) of ``db``, as numpy columns; edges sorted by (u, v)."""
    graph_db = db.open("r")
    try:
        nodes = read_node_columns(graph_db, ["position", "size"])
        edges = read_edge_columns(graph_db, edge_attrs)
    finally:
        graph_db.close()
    order = np.lexsort((edges["v"], edges["u"]))
    return nodes, {name: column[order] for name, column in edges.items()}


def segments_of(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The segment of each of ``ids`` in a look-up table (every id must be
    in it)."""
    order = np.argsort(table[0])
    at = np.searchsorted(table[0][order], ids)
    assert np.all(table[0][order][at] == ids), "ids missing from the table"
    return table[1][order][at]


def voi(graph: FragmentGraph, labels: np.ndarray, reference: np.ndarray) -> float:
    """Variation of information (split + merge, bits) between two
    segmentations of ``graph``'s fragments (one label per fragment, in the
    order of ``graph.ids``), over the fragments' voxels (each fragment
    counts its size)."""
    scores = segmentation_scores(
        np.repeat(labels, graph.sizes), np.repeat(reference, graph.sizes)
    )
    return scores["voi"]


def brute_force_segment_edges(
    u: np.ndarray,
    v: np.ndarray,
    means: np.ndarray,
    counts: np.ndarray,
    lows: np.ndarray,
    highs: np.ndarray,
) -> dict[tuple[int, int], tuple[float, float, float, float]]:
    """Per unordered pair ``(min, max)`` of distinct ends: the mean over all
    observations (``sum(mean * count) / sum(count)``), the total count, the
    smallest low and the largest high, by a plain loop."""
    sums: dict[tuple[int, int], list[float]] = {}
    for a, b, mean, count, low, high in zip(
        u.tolist(),
        v.tolist(),
        means.tolist(),
        counts.tolist(),
        lows.tolist(),
        highs.tolist(),
        strict=True,
    ):
        if a == b:
            continue
        key = (min(a, b), max(a, b))
        total = sums.setdefault(key, [0.0, 0.0, np.inf, -np.inf])
        total[0] += mean * count
        total[1] += count
        total[2] = min(total[2], low)
        total[3] = max(total[3], high)
    return {
        key: (total[0] / total[1], total[1], total[2], total[3])
        for key, total in sums.items()
    }
