"""GraphMWSBlocks: mutex watershed on a fragment graph, one block at a time,
each block keeping the segments of its own fragments."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
from funlib.geometry import Coordinate, Roi

from ..dbs import ThreadConnections
from ..graph_tables import inside_roi, read_edge_columns, read_node_columns
from ..graph_writes import replace_nodes_in_roi
from ..kernels.graph_mws import (
    interior_segments,
    mean_positions,
    mutex_watershed,
    weighted_edges,
)
from ..utils import PydanticCoordinate
from .blockwise import BlockwiseTask
from .graph_level import (
    EdgeWeights,
    GraphLevelTask,
    high_name,
    low_name,
    stored_among,
    with_summaries,
)

logger = logging.getLogger(__name__)


class GraphMWSBlocks(GraphLevelTask):
    """Mutex watershed on the fragment graph, block by block.

    Each block reads the fragments positioned in the block grown by
    `context` and the edges between them, runs the mutex watershed on that
    graph (as `GraphMWS` does on the whole graph), and keeps the decisions
    for its own fragments: those positioned in the block. Its segments are
    the groups its own fragments fall into (a group that continues into the
    context is cut at the block's faces; the next level joins the parts),
    each named by the smallest fragment id in it. A block writes its segments
    as nodes of `segments_db` and its part of `lut` as a piece.

    With one block covering `roi` the result equals `GraphMWS` on the same
    graph.
    """

    task_type: Literal["graph-mws-blocks"] = "graph-mws-blocks"
    weights: EdgeWeights
    """Per edge attribute ``a``, a ``(w, b)`` pair: the edge's weight is
    ``w * a + b`` (as in `GraphMWS`): positive weights merge, negative ones
    keep apart, stronger first."""
    context: PydanticCoordinate
    """How far beyond each block its watershed looks, in world units, one
    value per spatial axis: repulsive edges seen there keep the block from
    merges the whole graph would refuse. 0 decides each block on its own
    fragments alone."""
    edge_per_attr: bool = True
    """``True``: every attribute of `weights` gives its own edge; ``False``:
    one edge per pair with the sum of the weighted attributes."""
    edge_score: Literal["strongest", "mean"] = "strongest"
    """How an edge between two segments of the level below is weighted:
    ``"strongest"`` by its strongest fragment edge (``a__min`` or
    ``a__max``, whichever weighs more), continuing the mutex watershed over
    the fragments as if it had run on the whole graph; ``"mean"`` by the
    mean over all the fragment edges' observations (e.g. the mean affinity
    over every voxel contact between the two). Edges of a fragment graph
    (without ``a__min``/``a__max``), and `edge_per_attr` ``False``, always
    use the mean."""
    fit: Literal["shrink"] = "shrink"
    """Blocks at the end of `roi` are cropped to it."""
    read_write_conflict: Literal[False] = False
    """Blocks only read fragments and write their own segments: any order."""

    @property
    def context_size(self) -> Coordinate:
        return self.context

    @property
    def output_paths(self) -> list:
        return [self.lut.location]

    @property
    def segments_out(self):
        """`segments_db` with the count columns of the mean edge attributes."""
        return with_summaries(self.segments_db, list(self.weights))

    def check_config(self) -> None:
        self.check_level_geometry()
        if not self.produced_upstream(self.fragments_db.location):
            self.fragments_db.check_usable()
            self.fragments_db.require_edge_attrs(
                self.weights, f"{type(self).__name__}.weights", "fragments_db"
            )

    def check_upstream(self, upstream: list[BlockwiseTask]) -> None:
        self.check_nesting(upstream)

    def init(self) -> None:
        self.segments_out.init()

    def drop_artifacts(self) -> None:
        self.lut.drop_pieces()
        self.segments_db.drop()

    @contextmanager
    def process_block_func(self) -> Iterator:
        fragments = ThreadConnections(self.fragments_db, mode="r")
        segments = ThreadConnections(self.segments_out)

        def process_block(block) -> None:
            table, nodes = self.agglomerate(
                fragments.get(), block.read_roi, block.write_roi
            )
            write_roi = block.write_roi.intersect(self.roi)
            replace_nodes_in_roi(segments.get(), nodes, write_roi)
            self.lut.piece(self.block_index(block.write_roi)).save(table)

        try:
            yield process_block
        finally:
            fragments.close_all()
            segments.close_all()

    def agglomerate(
        self, graph_db, read_roi: Roi, write_roi: Roi
    ) -> tuple[np.ndarray, dict[int, dict]]:
        """The block's ``(2, n)`` table (its fragments, their segments) and
        its segment nodes (id to ``position`` and ``size``)."""
        read_roi, write_roi = (
            read_roi.intersect(self.roi),
            write_roi.intersect(self.roi),
        )
        nodes = read_node_columns(graph_db, ["position", "size"], roi=read_roi)
        scored = self.scored_attrs(graph_db)
        edges = read_edge_columns(graph_db, list(scored), u_ids=nodes["id"])
        u, v, weights = weighted_edges(
            edges["u"], edges["v"], edges, scored, self.edge_per_attr
        )
        clusters = mutex_watershed(nodes["id"], u, v, weights)
        interior = inside_roi(nodes["position"], write_roi)
        fragment_ids, segment_ids = interior_segments(nodes["id"], clusters, interior)
        ids, sizes, positions = mean_positions(
            segment_ids, nodes["size"][interior], nodes["position"][interior]
        )
        positions = _clipped(positions, write_roi)
        segment_nodes = {
            int(i): {"position": tuple(p), "size": int(s)}
            for i, p, s in zip(
                ids.tolist(), positions.tolist(), sizes.tolist(), strict=True
            )
        }
        logger.debug(
            "%s: %d fragments in %d segments", write_roi, fragment_ids.size, ids.size
        )
        return np.stack([fragment_ids, segment_ids]), segment_nodes

    def scored_attrs(self, graph_db) -> dict[str, tuple[float, float]]:
        """The stored edge attributes to weigh, each with its ``(w, b)``."""
        if self.edge_score == "mean" or not self.edge_per_attr:
            return dict(self.weights)
        scored = {}
        for attr, weight in self.weights.items():
            extremes = stored_among(graph_db, [low_name(attr), high_name(attr)])
            for name in extremes or [attr]:
                scored[name] = weight
        return scored


def _clipped(positions: np.ndarray, roi: Roi) -> np.ndarray:
    # a mean of positions inside the block is inside it, up to rounding: keep
    # it there, so that the segment is found in (and only in) its block.
    # PostgreSQL stores positions as float32: the last value below the end
    # must be one float32 can hold, or storing would round it onto the end.
    begin = np.array(roi.begin, dtype=np.float64)
    end = np.array(roi.end, dtype=np.float32)
    last = np.nextafter(end, np.float32(-np.inf)).astype(np.float64)
    return np.clip(positions, begin, last)
