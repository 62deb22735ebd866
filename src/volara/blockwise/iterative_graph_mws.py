"""One level of blockwise agglomeration of a fragment graph, under volara
1.0.5's names: `IterativeGraphMWS` (segments, their edges and the table) and
`GraphMWSExtractFragments` (segments and the table, no edges).

volara 1.0.5 chained levels as ``round_1 + round_2``, the second reading the
first one's segment graph with larger blocks, and composed their tables
with ``(lut1 + lut2).load_iterated()``; both work the same here.
"""

from __future__ import annotations

from typing import Literal

from funlib.geometry import Coordinate

from ..utils import PydanticCoordinate
from .assemble_lut import AssembleLUT
from .composite import CompositeTask, stage_options
from .frag_seg_edge_agglom import FragSegEdgeAgglom
from .graph_level import EdgeWeights, GraphLevelTask
from .graph_mws_blocks import GraphMWSBlocks
from .pipeline import Pipeline


class _GraphMWSLevel(GraphLevelTask, CompositeTask):
    weights: EdgeWeights
    """Per edge attribute ``a``, a ``(w, b)`` pair: the edge's weight is
    ``w * a + b`` (as in `GraphMWS`): positive weights merge, negative ones
    keep apart, stronger first. Every name must be an edge attribute of
    `fragments_db`."""
    edge_per_attr: bool = True
    """``True``: every attribute of `weights` gives its own edge; ``False``:
    one edge per pair with the sum of the weighted attributes."""
    context: PydanticCoordinate | None = None
    """How far beyond each block its watershed looks, in world units, one
    value per spatial axis (see `GraphMWSBlocks.context`)."""
    edge_score: Literal["strongest", "mean"] = "strongest"
    """How edges between segments of an earlier level are weighted (see
    `GraphMWSBlocks.edge_score`)."""
    read_write_conflict: Literal[False] = False

    def _default_context(self) -> Coordinate:
        raise NotImplementedError

    def _blocks(self) -> GraphMWSBlocks:
        return GraphMWSBlocks(
            fragments_db=self.fragments_db,
            segments_db=self.segments_db,
            lut=self.lut,
            roi=self.roi,
            block_size=self.block_size,
            weights=self.weights,
            edge_per_attr=self.edge_per_attr,
            edge_score=self.edge_score,
            context=self.context
            if self.context is not None
            else self._default_context(),
            **stage_options(self),
        )

    def _assembly(self) -> AssembleLUT:
        return AssembleLUT(
            lut=self.lut,
            roi=self.roi,
            block_size=self.block_size,
            **stage_options(self),
        )


class IterativeGraphMWS(_GraphMWSLevel):
    """One level of hierarchical mutex watershed on a fragment graph: the
    segments of every block (`GraphMWSBlocks`) as nodes of `segments_db`,
    the edges between them (`FragSegEdgeAgglom`, means over all the
    fragment edges they join, with counts), and `lut` from `fragments_db`'s
    nodes to the segments (`AssembleLUT`).

    Run the next level on `segments_db` with blocks a whole multiple of
    `block_size`, until one block covers `roi`; compose the levels' tables
    with ``(lut1 + lut2).load_iterated()``. `GraphMWS` with ``block_size``
    does all of this in one task.
    """

    task_type: Literal["iterative-graph-mws"] = "iterative-graph-mws"
    context: PydanticCoordinate | None = None
    """How far beyond each block its watershed looks, in world units, one
    value per spatial axis; ``None``: one block (as in volara 1.0.5)."""
    fit: Literal["overhang", "shrink"] = "overhang"
    """Accepted as volara 1.0.5 wrote it; blocks are cropped to `roi` either
    way."""

    def _default_context(self) -> Coordinate:
        return self.block_size

    def stages(self) -> Pipeline:
        blocks = self._blocks()
        edges = FragSegEdgeAgglom(
            fragments_db=self.fragments_db,
            segments_db=self.segments_db,
            lut=self.lut,
            roi=self.roi,
            block_size=self.block_size,
            edge_attrs=list(self.weights),
            **stage_options(self),
        )
        return blocks + (edges | self._assembly())


class GraphMWSExtractFragments(_GraphMWSLevel):
    """Mutex watershed on a fragment graph block by block: the segments of
    every block as nodes of `segments_db` (no edges; `FragSegEdgeAgglom`
    adds them) and `lut` from `fragments_db`'s nodes to the segments.

    Each block decides on its own fragments and, with `context`, those
    around it (see `GraphMWSBlocks`).
    """

    task_type: Literal["graph-mws-extract-frags"] = "graph-mws-extract-frags"
    context: PydanticCoordinate | None = None
    """How far beyond each block its watershed looks, in world units, one
    value per spatial axis; ``None``: not at all (as in volara 1.0.5)."""
    fit: Literal["shrink", "overhang"] = "shrink"
    """Accepted as volara 1.0.5 wrote it; blocks are cropped to `roi` either
    way."""

    def _default_context(self) -> Coordinate:
        return Coordinate((0,) * self.block_size.dims)

    def stages(self) -> Pipeline:
        return self._blocks() + self._assembly()
