"""DistanceAgglom: edges between touching fragments, scored by how far apart
their embeddings are."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
from funlib.geometry import Coordinate
from funlib.persistence.types import Vec
from pydantic import field_validator, model_validator

from ..datasets import Dataset, Labels
from ..dbs import AnyDB, ThreadConnections
from ..graph_tables import owned_pairs, read_node_columns, write_edge_rows
from ..kernels.agglomeration import adjacent_pairs, embedding_distances, lookup_rows
from ..lut import LUT
from ..utils import PydanticCoordinate, check_identifier
from .grid import GridTask

logger = logging.getLogger(__name__)


class DistanceAgglom(GridTask):
    """Add an edge between every two fragments that touch (share a voxel
    face), with the distance between their embeddings as ``distance``.

    A fragment's embedding is the concatenation of its node attributes named
    by `distance_keys` (e.g. the mean intensity of each channel), read from
    `storage`. Blocks find touching pairs within their write region grown by
    `context`, and write the edges whose node ``u`` (the smaller id) has its
    position in the block's write region, so every edge is written once.
    Pairs that touch only outside the read region of ``u``'s block are
    missed: give `context` about half the size of the largest fragment.
    """

    task_type: Literal["distance-agglom"] = "distance-agglom"
    storage: AnyDB | LUT
    """The graph database with one node per fragment (``position`` in world
    units and the `distance_keys` attributes); edges are added to it.

    A look-up table is not accepted: the embeddings live on the nodes of a
    graph database, and a table has none. To merge by embedding distance,
    write the edges here and run `GraphMWS` with a weight on ``distance``,
    e.g. ``{"distance": (-1.0, threshold)}``."""
    frags_data: Labels
    """The fragments (uint64, 0 is background); blocks follow its grid."""
    distance_keys: list[str] | None = None
    """Node attributes making up a fragment's embedding, in this order (each
    a number or a vector). Required."""
    distance_metric: Literal["euclidean", "cosine", "max"] = "cosine"
    """How embeddings are compared: ``"cosine"`` (``1 - cos`` of the angle,
    0 to 2), ``"euclidean"`` (length of the difference) or ``"max"`` (largest
    difference of one component)."""
    distance_threshold: float | None = None
    """Only pairs whose embedding distance is at most this are written.
    ``None`` writes every touching pair."""
    background_intensities: list[float] | None = None
    """One value per entry of `distance_keys`, subtracted from that
    attribute before comparing (e.g. the background intensity of each
    channel, so cosine distances compare signal, not offset). ``None``: 0."""
    eps: float = 1e-8
    """Smallest norm divided by in the cosine distance, so that an all-zero
    embedding does not divide by zero."""
    block_size: PydanticCoordinate
    """Size of the region each block writes edges for, in voxels, one value
    per spatial axis."""
    context: PydanticCoordinate
    """Extra region read on each side of a block, in voxels, one value per
    spatial axis."""
    fit: Literal["shrink"] = "shrink"
    read_write_conflict: Literal[False] = False

    @field_validator("storage")
    @classmethod
    def _needs_a_db(cls, storage):
        if isinstance(storage, LUT):
            raise ValueError(
                "DistanceAgglom.storage: a look-up table cannot hold the fragments' "
                "embeddings; give the graph database whose nodes carry them, then run "
                'GraphMWS with weights={"distance": (-1.0, threshold)} to get a LUT'
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

    def check_config(self) -> None:
        super().check_config()
        if not self.distance_keys:
            raise ValueError(
                "DistanceAgglom.distance_keys is empty: name the node attributes "
                'holding the embeddings, e.g. distance_keys=["channel_means"]'
            )
        node_attrs, _ = self.db.graph_attrs
        for key in self.distance_keys:
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
        metric, eps, threshold = self.distance_metric, self.eps, self.distance_threshold

        def process_block(block) -> None:
            u, v = adjacent_pairs(fragments.to_ndarray(block.read_roi, fill_value=0))
            if u.size == 0:
                return
            ids = np.concatenate([u, v])
            nodes = read_node_columns(dbs.get(), ["position", *keys], ids=ids)
            owned = owned_pairs(block.write_roi, u, v, nodes)
            embedding = _embeddings(nodes, keys, background)
            emb_u, _ = lookup_rows(u[owned], nodes["id"], embedding)
            emb_v, _ = lookup_rows(v[owned], nodes["id"], embedding)
            distances = embedding_distances(emb_u, emb_v, metric, eps)
            keep = np.ones(distances.size, dtype=bool)
            if threshold is not None:
                keep = distances <= threshold
            write_edge_rows(
                dbs.get(), u[owned][keep], v[owned][keep], {"distance": distances[keep]}
            )

        try:
            yield process_block
        finally:
            dbs.close_all()


def _embeddings(nodes: dict, keys: list[str], background: list[float]) -> np.ndarray:
    """Per node, its `keys` attributes minus their background, side by side."""
    parts = [
        np.asarray(nodes[key], dtype=np.float64).reshape(nodes["id"].size, -1) - offset
        for key, offset in zip(keys, background, strict=True)
    ]
    return np.concatenate(parts, axis=1)
