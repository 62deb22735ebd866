"""AffAgglom: edges between touching fragments, scored by mean affinity."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import networkx as nx
import numpy as np
from funlib.geometry import Coordinate, Roi
from pydantic import field_validator

from ..datasets import Affs, Dataset, Labels, read_region
from ..dbs import AnyDB, ThreadConnections
from ..graph_tables import owned_pairs, read_node_columns, write_edge_rows
from ..kernels.agglomeration import (
    affinity_statistics,
    mean_affinities,
    pair_distances,
)
from ..utils import PydanticCoordinate, check_identifier
from .graph_level import count_name
from .grid import GridTask

logger = logging.getLogger(__name__)


class AffAgglom(GridTask):
    """Add an edge between every two fragments that touch along an affinity
    offset, with the mean affinity over their contacts as edge attributes.

    Each block reads fragments and affinities on its write region grown by
    `context`, computes the means over all contacts it sees, and writes the
    edges ``(u, v)`` (``u < v``) whose node ``u`` has its stored position in
    the block's write region, so every edge is written by exactly one block.
    Scores equal the means over the whole volume when `context` covers the
    extent of every fragment around its center; with less context, contacts
    beyond the read region are missed. Edges are only written between
    fragments that have nodes in `db` (e.g. written by `ExtractFrags`).
    Rerunning a block never duplicates an edge: existing edges are kept.
    """

    task_type: Literal["aff-agglom"] = "aff-agglom"
    db: AnyDB
    """The graph database holding one node per fragment (id, ``position`` in
    world units); edges are added to it. Every name of `scores` must be one of
    its ``edge_attrs``."""
    affs_data: Affs
    """Affinities, channels first, one channel per offset of their
    neighborhood; float in [0, 1] or uint8 in [0, 255]."""
    frags_data: Labels
    """The fragments (uint64, 0 is background); blocks follow its grid."""
    block_size: PydanticCoordinate
    """Size of the region each block writes edges for, in voxels, one value
    per spatial axis."""
    context: PydanticCoordinate
    """Extra region read on each side of a block, in voxels, one value per
    spatial axis. Make it at least about half the size of the largest
    fragment for scores that equal the whole-volume means."""
    scores: dict[str, list[PydanticCoordinate]]
    """Edge attributes to compute, each the mean affinity over the contacts
    along a group of offsets (in voxels, each one of the affinities'
    neighborhood), e.g. ``{"xy_aff": [[0, 1, 0], [0, 0, 1]], "z_aff":
    [[1, 0, 0]]}``. A pair without contacts along a group's offsets gets no
    value (NULL) for that score. Where `db` has an edge attribute
    ``<name>__size``, the number of contacts the mean is over is written
    there: hierarchical agglomeration (`GraphMWS` with ``block_size``) then
    averages segment edges over voxel contacts, not over fragment edges."""
    bulk_write: bool = False
    """Accepted so that volara 1.0.5 configs load; has no effect. volara 1
    wrote differently with it (indexes dropped, and an edge scored by the
    first block to finish among all those holding voxels of its smaller
    fragment); volara 2 always writes each block's edges in one insert, with
    the scores described above."""
    fit: Literal["shrink"] = "shrink"
    """Blocks at the end of the volume are cropped to it."""
    read_write_conflict: Literal[False] = False
    """Blocks are independent and may run in any order."""

    @field_validator("scores")
    @classmethod
    def _check_scores(cls, scores):
        if not scores:
            raise ValueError("scores is empty: name at least one score and its offsets")
        for name, offsets in scores.items():
            check_identifier(name, "score name")
            if not offsets:
                raise ValueError(f"score {name!r} has no offsets")
        return scores

    @property
    def task_name(self) -> str:
        return f"{self.db.id}-{self.task_type}"

    @property
    def grid_dataset(self) -> Dataset:
        return self.frags_data

    @property
    def context_voxels(self) -> Coordinate:
        return self.context

    def check_config(self) -> None:
        super().check_config()
        self.db.require_edge_attrs(self.scores, "AffAgglom.scores")
        neighborhood = [tuple(offset) for offset in self.affs_data.neighborhood or []]
        for name, offsets in self.scores.items():
            for offset in offsets:
                if tuple(offset) not in neighborhood:
                    raise ValueError(
                        f"AffAgglom.scores[{name!r}]: offset {tuple(offset)} is not in "
                        f"the neighborhood of {self.affs_data.store!s} "
                        f"({neighborhood}); use offsets the affinities have"
                    )
        self.check_same_grid("affs_data", self.affs_data)

    def agglomerate(self, affs: np.ndarray, frags: np.ndarray, rag: nx.Graph) -> None:
        """Add to ``rag`` an edge between every two fragments of ``frags``
        that touch, with the mean affinity over their contacts per score
        (volara 1.0.5's method; the blocks compute the same).

        ``affs`` holds one channel per offset of the affinities'
        neighborhood, ``frags`` the fragment ids (0 is background) of the
        same region. An edge gets a score only if the pair touches along
        one of the score's offsets; a pair touching along none of any
        score's offsets gets no edge. Attributes of edges already in
        ``rag`` are updated. Affinities are averaged as given (uint8 ones
        are not scaled here).
        """
        neighborhood = [tuple(offset) for offset in self.affs_data.neighborhood or []]
        scores = {
            name: [tuple(o) for o in offsets] for name, offsets in self.scores.items()
        }
        u, v, means = mean_affinities(frags, affs, neighborhood, scores)
        for name, values in means.items():
            has_contacts = ~np.isnan(values)
            for a, b, value in zip(
                u[has_contacts], v[has_contacts], values[has_contacts], strict=True
            ):
                rag.add_edge(int(a), int(b), **{name: float(value)})

    @property
    def counted_scores(self) -> list[str]:
        """The scores whose number of contacts is stored too: those with an
        edge attribute ``<score>__size`` in `db`."""
        _, edge_attrs = self.db.graph_attrs
        return [name for name in self.scores if count_name(name) in edge_attrs]

    def init(self) -> None:
        self.db.init()

    def drop_artifacts(self) -> None:
        self.db.drop_edges()

    @contextmanager
    def process_block_func(self) -> Iterator:
        fragments = self.frags_data.array("r")
        affinities = self.affs_data.array("r")
        dbs = ThreadConnections(self.db)
        neighborhood = [tuple(offset) for offset in self.affs_data.neighborhood or []]
        scores = {
            name: [tuple(o) for o in offsets] for name, offsets in self.scores.items()
        }

        counted = self.counted_scores
        frags_chunks = self.chunk_cache(self.frags_data)
        affs_chunks = self.chunk_cache(self.affs_data)

        def process_block(block) -> None:
            frags = read_region(fragments, block.read_roi, cache=frags_chunks)
            affs = read_region(affinities, block.read_roi, cache=affs_chunks)
            if affs.dtype == np.uint8:
                affs = affs.astype(np.float32) / 255.0
            u, v, means, counts = affinity_statistics(frags, affs, neighborhood, scores)
            columns = {**means, **{count_name(n): counts[n] for n in counted}}
            _write_block_edges(dbs.get(), block.write_roi, u, v, columns)

        try:
            yield process_block
        finally:
            dbs.close_all()


def _write_block_edges(
    graph_db,
    write_roi: Roi,
    u: np.ndarray,
    v: np.ndarray,
    scores: dict[str, np.ndarray],
) -> None:
    """Write the edges whose node ``u`` has its position in ``write_roi``,
    with their scores and the distance between the nodes' positions."""
    if u.size == 0:
        return
    nodes = read_node_columns(graph_db, ["position"], ids=np.concatenate([u, v]))
    owned = owned_pairs(write_roi, u, v, nodes)
    distances = pair_distances(u, v, nodes["id"], nodes["position"])
    columns = {"distance": distances, **scores}
    write_edge_rows(
        graph_db, u[owned], v[owned], {k: c[owned] for k, c in columns.items()}
    )
