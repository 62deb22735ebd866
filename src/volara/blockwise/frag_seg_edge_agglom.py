"""FragSegEdgeAgglom: edges between fragments joined into edges between the
segments they belong to."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
from funlib.geometry import Coordinate, Roi

from ..dbs import ThreadConnections
from ..graph_tables import (
    index_edge_ends,
    inside_roi,
    read_edge_columns,
    read_node_columns,
    write_edge_rows,
)
from ..kernels.graph_mws import combined_edges, node_index
from ..kernels.relabel import sorted_mapping
from ..lut import LUT
from .blockwise import BlockwiseTask
from .graph_level import (
    GraphLevelTask,
    count_name,
    high_name,
    low_name,
    piece_table,
    stored_among,
    summary_names,
    with_summaries,
)

logger = logging.getLogger(__name__)

_CACHED_PIECES = 64


class FragSegEdgeAgglom(GraphLevelTask):
    """Join the edges between fragments into edges between their segments.

    Needs the segments of `lut` (written block by block, e.g. by
    `GraphMWSExtractFragments` on the same `roi` and `block_size`). Each
    block writes the edges of the segment pairs whose smaller segment id is
    one of its segments; it reads every fragment edge touching its
    fragments, so a pair's edge joins all fragment edges between the two
    segments, wherever they were stored. Each attribute of `edge_attrs` is
    joined as a mean weighted by its count (``a__size``, or one per
    fragment edge where the fragment graph has no count), and the total
    count is written beside it, with the smallest and largest fragment edge
    value (``a__min``, ``a__max``) for watersheds that take the strongest
    fragment edge between two segments.

    Reads the segments of the blocks next to its own, so a fragment edge may
    reach at most one block beyond its fragment's block.
    """

    task_type: Literal["frag-seg-edge-agglom"] = "frag-seg-edge-agglom"
    edge_attrs: list[str]
    """The mean edge attributes to join (e.g. ``["adj_weight"]``), each an
    edge attribute of `fragments_db`."""
    lut: LUT | None = None  # type: ignore[assignment]
    """The look-up table from fragments to segments whose pieces the blocks
    read. ``None`` (as in volara 1.0.5's configs): the `lut` of the task that
    writes `segments_db` earlier in the same pipeline."""
    fit: Literal["shrink"] = "shrink"
    """Blocks at the end of `roi` are cropped to it."""
    read_write_conflict: Literal[False] = False
    """Each segment pair is written by one block: any order."""

    @property
    def context_size(self) -> Coordinate:
        # not read: makes each block wait for its neighbors' segments
        return self.block_size

    @property
    def segments_out(self):
        return with_summaries(self.segments_db, self.edge_attrs)

    def check_upstream(self, upstream: list[BlockwiseTask]) -> None:
        self.check_nesting(upstream)
        if self.lut is not None:
            return
        for task in upstream:
            if (
                isinstance(task, GraphLevelTask)
                and task is not self
                and not isinstance(task, FragSegEdgeAgglom)
                and task.segments_db.location == self.segments_db.location
            ):
                self.lut = task.lut
                return

    def check_config(self) -> None:
        self.check_level_geometry()
        if self.lut is None:
            raise ValueError(
                "FragSegEdgeAgglom.lut is None and no task earlier in the pipeline "
                f"writes segments_db ({self.segments_db.location}). Give the lut "
                "that GraphMWSExtractFragments wrote, or run after it."
            )
        if not self.produced_upstream(self.fragments_db.location):
            self.fragments_db.check_usable()
            self.fragments_db.require_edge_attrs(
                self.edge_attrs, f"{type(self).__name__}.edge_attrs", "fragments_db"
            )

    def init(self) -> None:
        self.segments_out.init()
        graph = self.fragments_db.open("r+")
        try:
            index_edge_ends(graph)
        finally:
            graph.close()  # type: ignore[attr-defined]

    def drop_artifacts(self) -> None:
        self.segments_db.drop_edges()

    @contextmanager
    def process_block_func(self) -> Iterator:
        fragments = ThreadConnections(self.fragments_db, mode="r")
        segments = ThreadConnections(self.segments_out)
        # neighboring blocks read the same pieces: each is loaded once per
        # worker (they are final once this stage runs)
        pieces = functools.lru_cache(maxsize=_CACHED_PIECES)(self._piece_loader())

        def process_block(block) -> None:
            u, v, columns = self.segment_edges(
                fragments.get(), block.write_roi.intersect(self.roi), pieces
            )
            write_edge_rows(segments.get(), u, v, columns)

        try:
            yield process_block
        finally:
            fragments.close_all()
            segments.close_all()

    def segment_edges(
        self,
        graph_db,
        write_roi: Roi,
        pieces: Callable[[tuple[int, ...]], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """The segment edges this block writes: ``(u, v, columns)`` with the
        mean, count, smallest and largest value of each of `edge_attrs`.
        ``pieces`` loads the piece of `lut` at a grid position (default:
        from its file)."""
        own = read_node_columns(graph_db, [], roi=write_roi)["id"]
        summaries = stored_among(
            graph_db, [name for a in self.edge_attrs for name in summary_names(a)]
        )
        edges = _edges_touching(graph_db, [*self.edge_attrs, *summaries], own)
        fragments, segments = self._segments_of(
            graph_db,
            own,
            edges,
            write_roi,
            pieces or self._piece_loader(),
        )
        at_u, at_v = (
            node_index(fragments, edges["u"]),
            node_index(fragments, edges["v"]),
        )
        known = (at_u >= 0) & (at_v >= 0)
        su, sv = segments[at_u[known]], segments[at_v[known]]
        at_own = node_index(fragments, own)
        owned = np.isin(np.minimum(su, sv), segments[at_own[at_own >= 0]])
        edges = {key: column[known][owned] for key, column in edges.items()}

        def stored_or(name: str, attr: str) -> np.ndarray:
            # a fragment graph's edge is its own count of one, extremes itself
            if name in edges:
                return edges[name]
            return np.ones(edges["u"].size) if name == count_name(attr) else edges[attr]

        u, v, joined = combined_edges(
            su[owned],
            sv[owned],
            means={a: edges[a] for a in self.edge_attrs},
            counts={a: stored_or(count_name(a), a) for a in self.edge_attrs},
            lows={a: stored_or(low_name(a), a) for a in self.edge_attrs},
            highs={a: stored_or(high_name(a), a) for a in self.edge_attrs},
        )
        columns = {}
        for attr, parts in joined.items():
            columns[attr] = parts["mean"]
            columns[count_name(attr)] = parts["count"]
            columns[low_name(attr)] = parts["low"]
            columns[high_name(attr)] = parts["high"]
        return u, v, columns

    def _piece_loader(self) -> Callable[[tuple[int, ...]], np.ndarray]:
        """Loads the piece of `lut` at a grid position from its file."""
        assert self.lut is not None, "set by check_upstream or the config"
        return functools.partial(piece_table, self.lut)

    def _segments_of(
        self,
        graph_db,
        own: np.ndarray,
        edges: dict,
        write_roi: Roi,
        pieces: Callable[[tuple[int, ...]], np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """A sorted mapping from every fragment the edges touch to its
        segment, from the pieces of the blocks holding those fragments."""
        ends = np.unique(np.concatenate([edges["u"], edges["v"]]))
        others = ends[~np.isin(ends, own)]
        positions = read_node_columns(graph_db, ["position"], ids=others)["position"]
        inside = inside_roi(positions, self.roi)
        indices = {tuple(i) for i in self.indices_of(positions[inside]).tolist()}
        indices.add(self.block_index(write_roi))
        tables = [pieces(index) for index in sorted(indices)]
        table = np.concatenate(tables, axis=1)
        return sorted_mapping(table[0], table[1])


def _edges_touching(graph_db, attrs: list[str], ids: np.ndarray) -> dict:
    """Every edge with an end in ``ids``, once."""
    from_ids = read_edge_columns(graph_db, attrs, u_ids=ids)
    to_ids = read_edge_columns(graph_db, attrs, v_ids=ids)
    only_to = ~np.isin(to_ids["u"], ids)
    return {
        key: np.concatenate([from_ids[key], to_ids[key][only_to]]) for key in from_ids
    }
