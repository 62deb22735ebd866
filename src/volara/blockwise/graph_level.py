"""What the tasks of one level of blockwise graph agglomeration share.

A *level* turns a fragment graph (nodes with a ``position`` in world units
and a ``size``, scored edges) into a coarser segment graph of the same form,
block by block: `GraphMWSBlocks` decides the segments of each block and
writes them as nodes, `FragSegEdgeAgglom` joins the fragment edges into
segment edges, `AssembleLUT` gathers the blocks' look-up tables. The
segment graph is the next level's fragment graph.

An edge attribute ``a`` is a mean (e.g. of affinities over voxel contacts);
its count is stored beside it as ``a__size`` (volara 1.0.5's name), and the
smallest and largest fragment edge values it joins as ``a__min`` and
``a__max``. Segment edges carry all four: the next level averages over the
fine observations, not over means, and can take the strongest fragment edge
between two segments, as a mutex watershed over the fragments would. A
fragment graph without ``a__size`` counts each edge once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Annotated

import numpy as np
from funlib.geometry import Coordinate, Roi
from pydantic import AfterValidator, field_validator, model_validator

from ..dbs import DB, AnyDB
from ..lut import LUT
from ..utils import PydanticCoordinate, PydanticRoi, check_identifier
from .blockwise import BlockwiseTask


def count_name(attr: str) -> str:
    """The edge attribute holding how many observations the mean ``attr``
    averages."""
    return f"{attr}__size"


def low_name(attr: str) -> str:
    """The edge attribute holding the smallest value ``attr`` joins."""
    return f"{attr}__min"


def high_name(attr: str) -> str:
    """The edge attribute holding the largest value ``attr`` joins."""
    return f"{attr}__max"


def summary_names(attr: str) -> list[str]:
    """The columns stored beside the mean ``attr`` in a segment graph."""
    return [count_name(attr), low_name(attr), high_name(attr)]


ONE_BLOCK_TIMEOUT_SECONDS = 7 * 24 * 3600.0
"""Tasks that handle a whole graph in one block may take a week unless
their `timeout` says otherwise."""


def checked_weights(
    weights: dict[str, tuple[float, float]],
) -> dict[str, tuple[float, float]]:
    if not weights:
        raise ValueError("weights is empty: give at least one edge attribute")
    for name in weights:
        check_identifier(name, "weights: attribute name")
    return weights


EdgeWeights = Annotated[dict[str, tuple[float, float]], AfterValidator(checked_weights)]
"""Per edge attribute ``a``, a ``(w, b)`` pair: the edge's weight is
``w * a + b``."""


class OneBlockTask(BlockwiseTask):
    """A task that processes its whole `roi` in one block."""

    roi: PydanticRoi  # type: ignore[assignment]

    @property
    def write_roi(self) -> Roi:
        return self.roi

    @property
    def write_size(self) -> Coordinate:
        return self.roi.shape

    @property
    def context_size(self) -> Coordinate:
        return Coordinate((0,) * self.roi.dims)

    @property
    def block_timeout(self) -> float:
        """One block holds the whole graph: a week unless `timeout` is set."""
        return self.timeout if self.timeout is not None else ONE_BLOCK_TIMEOUT_SECONDS


class LevelTask(BlockwiseTask):
    """The block grid of a level: `roi` tiled by blocks of `block_size` (world
    units), and the level's look-up table."""

    lut: LUT
    """The look-up table from `fragments_db`'s nodes to this level's
    segments. Blocks write their part as pieces beside it (``<name>.blocks/``)
    until the level is done."""
    roi: PydanticRoi  # type: ignore[assignment]
    """The region of the graph to agglomerate, ``[offset, shape]`` in world
    units: nodes positioned in it; blocks tile it from its offset."""
    block_size: PydanticCoordinate
    """Size of each block, **in world units** (graphs have no voxels), one
    value per spatial axis. Every node belongs to the block its position lies
    in; segments never reach beyond one block, so the next level's blocks
    must be multiples of this size."""

    @field_validator("block_size")
    @classmethod
    def _positive_block_size(cls, block_size: Coordinate) -> Coordinate:
        if any(size <= 0 for size in block_size):
            raise ValueError(
                f"block_size must be positive on every axis (world units), got "
                f"{tuple(block_size)}"
            )
        return block_size

    @property
    def write_roi(self) -> Roi:
        return self.roi

    @property
    def write_size(self) -> Coordinate:
        return self.block_size

    def block_index(self, block_roi: Roi) -> tuple[int, ...]:
        """The position in the block grid of the block writing ``block_roi``."""
        offset = block_roi.offset - self.roi.offset
        return tuple(
            int(o) // int(s) for o, s in zip(offset, self.block_size, strict=True)
        )

    def grid_indices(self) -> list[tuple[int, ...]]:
        """Every block's position in the grid."""
        shape = [
            -(-int(extent) // int(size))
            for extent, size in zip(self.roi.shape, self.block_size, strict=True)
        ]
        return [tuple(int(i) for i in index) for index in np.ndindex(*shape)]

    def indices_of(self, positions: np.ndarray) -> np.ndarray:
        """Per position (rows, world units), the grid position of its block."""
        offset = np.array(self.roi.offset, dtype=np.float64)
        size = np.array(self.block_size, dtype=np.float64)
        return np.floor((np.asarray(positions) - offset) / size).astype(np.int64)


class GraphLevelTask(LevelTask):
    """A level's task that reads a fragment graph and writes a segment
    graph."""

    task_type: str
    """Tag that selects the task's class when a config is loaded."""
    fragments_db: AnyDB
    """The graph to agglomerate: fragments (or the previous level's
    segments) as nodes with ``position`` and ``size``, scored edges."""
    segments_db: AnyDB
    """Where this level's segments are written: one node per segment
    (``position``: size-weighted mean position in world units, ``size``:
    total size) and one edge per pair of touching segments. Must not be
    `fragments_db`. The mean edge attributes get a count column ``a__size``
    added if the config does not name it."""

    @property
    def task_name(self) -> str:
        """Named after the segment graph the task writes."""
        return f"{self.segments_db.id}-{self.task_type}"

    @model_validator(mode="after")
    def _distinct_databases(self):
        # at construction: in a pipeline, a later level's mistake would
        # otherwise surface as its tasks' names clashing with the earlier
        # level's, or after the earlier level prepared its outputs
        if _same_db(self.fragments_db, self.segments_db):
            raise ValueError(
                f"{type(self).__name__}.segments_db is the same database as "
                f"fragments_db ({self.fragments_db.location}): segments would mix "
                "with the fragments they are made of. Give segments_db another path "
                "(SQLite) or name (PostgreSQL)."
            )
        return self

    def check_level_geometry(self) -> None:
        """The databases have the ROI's dimensions."""
        if self.block_size.dims != self.roi.dims:
            raise ValueError(
                f"{type(self).__name__}.block_size has {self.block_size.dims} "
                f"values, roi has {self.roi.dims} dimensions"
            )
        if self.roi.dims != self.fragments_db.ndim:
            raise ValueError(
                f"{type(self).__name__}.roi has {self.roi.dims} dimensions, the "
                f"node positions of fragments_db have {self.fragments_db.ndim}"
            )

    def check_nesting(self, upstream: Iterable[BlockwiseTask]) -> None:
        """A level reading the segments of an earlier level must use blocks
        that are whole multiples of the earlier ones, on the same grid."""
        for task in upstream:
            if not isinstance(task, GraphLevelTask) or not _same_db(
                task.segments_db, self.fragments_db
            ):
                continue
            finer = task.block_size
            if any(
                int(b) % int(f) for b, f in zip(self.block_size, finer, strict=True)
            ):
                raise ValueError(
                    f"{type(self).__name__}.block_size {tuple(self.block_size)} is not "
                    f"a multiple of the block size {tuple(finer)} of the level that "
                    f"writes its fragments_db ({task.task_name}): a segment of that "
                    "level would be cut by this level's blocks. Use a multiple, e.g. "
                    f"{tuple(int(f) * 2 for f in finer)}."
                )
            shift = self.roi.offset - task.roi.offset
            if any(int(s) % int(f) for s, f in zip(shift, finer, strict=True)):
                raise ValueError(
                    f"{type(self).__name__}.roi starts at {tuple(self.roi.offset)}, "
                    f"off the block grid of {task.task_name} (offset "
                    f"{tuple(task.roi.offset)}, blocks of {tuple(finer)}); start it "
                    "on that grid"
                )


def _same_db(a: DB, b: DB) -> bool:
    return a.location == b.location


def with_summaries(db: DB, attrs: Sequence[str]) -> DB:
    """``db``'s config with each of ``attrs`` as a float edge attribute and
    its count, smallest and largest value beside it (the config's own types
    are kept)."""
    edge_attrs = dict(db.edge_attrs or {})
    for attr in attrs:
        check_identifier(attr, "edge attribute")
        for name in [attr, *summary_names(attr)]:
            edge_attrs.setdefault(name, "float")
    return db.model_copy(update={"edge_attrs": edge_attrs})


def stored_among(graph_db, names: Sequence[str]) -> list[str]:
    """Which of ``names`` are edge attributes of the open database."""
    stored = graph_db.edge_attrs
    return [name for name in names if name in stored]


def describe(table: np.ndarray) -> str:
    """A short summary of a look-up table, for logs."""
    return json.dumps(
        {"fragments": int(table.shape[1]), "segments": int(np.unique(table[1]).size)}
    )


def piece_table(lut: LUT, index: Sequence[int]) -> np.ndarray:
    """The piece of ``lut`` written by the block at ``index``; a clear error
    if that block has not written it."""
    table = lut.piece(index).load()
    if table is None:
        raise RuntimeError(
            f"no piece {tuple(index)} of {lut.uri}: the block at that grid "
            "position has not been agglomerated yet. Run the level's "
            "GraphMWSBlocks stage first; a fragment edge reaching further than "
            "one block needs a larger block_size."
        )
    return table
