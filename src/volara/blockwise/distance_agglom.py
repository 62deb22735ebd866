"""DistanceAgglom: edges between fragments that come close to each other,
with how close they are and how alike their embeddings are."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
from funlib.geometry import Coordinate
from funlib.persistence.types import Vec
from pydantic import field_validator, model_validator

from ..datasets import Dataset, Labels, read_region
from ..dbs import AnyDB, ThreadConnections
from ..graph_tables import owned_pairs, read_node_columns, write_edge_rows
from ..kernels.agglomeration import (
    dense_labels,
    embedding_similarities,
    fragment_distances,
    lookup_rows,
)
from ..lut import LUT
from ..utils import PydanticCoordinate, check_identifier
from .grid import GridTask

logger = logging.getLogger(__name__)


class DistanceAgglom(GridTask):
    """Add an edge between every two fragments whose voxels come within
    `distance_threshold` of each other (world units), with ``distance``, the
    smallest distance between their voxels (voxel centers, world units), and
    for each key of `distance_keys` the similarity of the two fragments'
    node attributes as ``<key>_similarity``.

    Blocks look for close pairs within their write region grown by
    `context`, and write the edges ``(u, v)`` (``u`` the smaller id) whose
    node ``u`` has its position in the block's write region, so every edge is
    written once. Both fragments need a node in `storage`. Voxels beyond the
    read region are not seen: a pair closer there than anywhere inside gets
    the distance seen inside, or no edge.
    """

    task_type: Literal["distance-agglom"] = "distance-agglom"
    storage: AnyDB | LUT
    """The graph database with one node per fragment (``position`` in world
    units and the `distance_keys` attributes); edges are added to it, with
    ``distance`` and one ``<key>_similarity`` edge attribute per key.

    A look-up table is not accepted: the embeddings live on the nodes of a
    graph database, and a table has none. To merge by similarity, write the
    edges here and run `GraphMWS` with weights on the similarities, e.g.
    ``{"emb_similarity": (1.0, -0.5)}``."""
    frags_data: Labels
    """The fragments (uint64, 0 is background); blocks follow its grid."""
    distance_keys: list[str] | None = None
    """Node attributes to compare (each a number or a vector): every key
    ``k`` gives the edge attribute ``k_similarity``, which must be one of the
    database's ``edge_attrs``. ``None``: only ``distance`` is written."""
    distance_metric: Literal["euclidean", "cosine", "max"] = "cosine"
    """How attributes are compared: ``"cosine"`` (cosine of the angle
    between them, -1 to 1), ``"euclidean"`` (minus the length of their
    difference) or ``"max"`` (minus the largest difference of one
    component). Larger is more alike for all three."""
    distance_threshold: float | None = None
    """Largest distance between two fragments' voxels (voxel centers, world
    units) for them to get an edge. ``None``: the smallest extent of
    `context` in world units (``min(context * voxel_size)``)."""
    background_intensities: list[float] | None = None
    """One value per entry of `distance_keys`, subtracted from that
    attribute before comparing (e.g. the background intensity of each
    channel, so cosine similarities compare signal, not offset). ``None``:
    0."""
    eps: float = 1e-8
    """Smallest product of norms divided by in the cosine similarity, so
    that an all-zero attribute does not divide by zero."""
    block_size: PydanticCoordinate
    """Size of the region each block writes edges for, in voxels, one value
    per spatial axis."""
    context: PydanticCoordinate
    """Extra region read on each side of a block, in voxels, one value per
    spatial axis. Make it at least `distance_threshold` (in voxels) plus
    about half the size of the largest fragment."""
    fit: Literal["shrink"] = "shrink"
    read_write_conflict: Literal[False] = False

    @field_validator("storage")
    @classmethod
    def _needs_a_db(cls, storage):
        if isinstance(storage, LUT):
            raise ValueError(
                "DistanceAgglom.storage: a look-up table cannot hold the fragments' "
                "embeddings; give the graph database whose nodes carry them, then run "
                "GraphMWS with weights on the similarities to get a LUT"
            )
        return storage

    @field_validator("distance_keys")
    @classmethod
    def _check_keys(cls, keys):
        for key in keys or []:
            check_identifier(key, "distance_keys: attribute name")
        return keys

    @model_validator(mode="after")
    def _check_background(self):
        keys = self.distance_keys or []
        if self.background_intensities is not None and len(
            self.background_intensities
        ) != len(keys):
            raise ValueError(
                f"DistanceAgglom.background_intensities has "
                f"{len(self.background_intensities)} values; give one per "
                f"distance key ({len(keys)}: {keys})"
            )
        return self

    @property
    def db(self) -> AnyDB:
        if isinstance(self.storage, LUT):  # refused by the validator already
            raise ValueError("DistanceAgglom.storage must be a graph database")
        return self.storage

    @property
    def task_name(self) -> str:
        # Named after the database it writes (as AffAgglom), so two graphs
        # built from one fragment array keep separate block tracking.
        return f"{self.db.id}-{self.task_type}"

    @property
    def grid_dataset(self) -> Dataset:
        return self.frags_data

    @property
    def context_voxels(self) -> Coordinate:
        return self.context

    @property
    def max_distance(self) -> float:
        """`distance_threshold`, or the smallest extent of `context` in
        world units."""
        if self.distance_threshold is not None:
            return float(self.distance_threshold)
        return float(min(self.context * self.voxel_size))

    def check_config(self) -> None:
        super().check_config()
        node_attrs, edge_attrs = self.db.graph_attrs
        for key in self.distance_keys or []:
            if key not in node_attrs:
                raise ValueError(
                    f"DistanceAgglom.distance_keys: {key!r} is not a node attribute "
                    f"of the database (it has {sorted(node_attrs)}). Add it to the "
                    "db's node_attrs and write it on the nodes first."
                )
            attr_type = node_attrs[key]
            if (attr_type.dtype if isinstance(attr_type, Vec) else attr_type) is str:
                raise ValueError(
                    f"DistanceAgglom.distance_keys: {key!r} holds text, not numbers"
                )
            if f"{key}_similarity" not in edge_attrs:
                raise ValueError(
                    f"DistanceAgglom.distance_keys: the similarity of {key!r} is "
                    f"written as {key}_similarity, which is not an edge attribute "
                    f"of the database (it has {sorted(edge_attrs)}). Add it, e.g. "
                    f'edge_attrs={{"{key}_similarity": "float"}}.'
                )

    def init(self) -> None:
        self.db.init()

    def drop_artifacts(self) -> None:
        self.db.drop_edges()

    @contextmanager
    def process_block_func(self) -> Iterator:
        fragments = self.frags_data.array("r")
        dbs = ThreadConnections(self.db)
        keys = list(self.distance_keys or [])
        background = self.background_intensities or [0.0] * len(keys)
        metric, eps = self.distance_metric, self.eps
        voxel_size, max_distance = self.voxel_size, self.max_distance

        def process_block(block) -> None:
            labels = read_region(fragments, block.read_roi)
            present = dense_labels(labels)[0][1:]
            if present.size < 2:
                return
            nodes = read_node_columns(dbs.get(), ["position", *keys], ids=present)
            sources = _positioned_in(nodes, block.write_roi)
            u, v, distance = fragment_distances(
                labels, voxel_size, max_distance, sources=sources
            )
            owned = owned_pairs(block.write_roi, u, v, nodes)
            u, v = u[owned], v[owned]
            columns = {"distance": distance[owned]}
            for key, offset in zip(keys, background, strict=True):
                values = nodes[key].reshape(nodes["id"].size, -1) - offset
                emb_u, _ = lookup_rows(u, nodes["id"], values)
                emb_v, _ = lookup_rows(v, nodes["id"], values)
                columns[f"{key}_similarity"] = embedding_similarities(
                    emb_u, emb_v, metric, eps
                )
            write_edge_rows(dbs.get(), u, v, columns)

        try:
            yield process_block
        finally:
            dbs.close_all()


def _positioned_in(nodes: dict, roi) -> np.ndarray:
    """Ids of the nodes whose position lies in ``roi`` (world units)."""
    begin = np.array(roi.begin, dtype=np.float64)
    end = np.array(roi.end, dtype=np.float64)
    positions = nodes["position"]
    inside = np.all((positions >= begin) & (positions < end), axis=1)
    return nodes["id"][inside]
