"""Writing a block's nodes so that running the block again is harmless.

daisy retries a block whose worker died, possibly after the block had
already written its nodes. funlib's bulk writes differ per backend on
duplicates: SQLite inserts with ``INSERT OR IGNORE`` (a rerun keeps the
first run's rows), PostgreSQL streams with ``COPY``, which fails on the first
duplicate id. So a block first deletes every node positioned in its write
region and then inserts its own, in one transaction: whatever an earlier,
interrupted or different run left in that region is replaced, on both
backends. Node positions must lie inside the block's write region, which
holds for centers of mass of the voxels a block writes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from funlib.geometry import Roi
from funlib.persistence.graphs import PgSQLGraphDatabase, SQLiteGraphDataBase
from funlib.persistence.graphs.graph_database import GraphDataBase

logger = logging.getLogger(__name__)


def replace_nodes_in_roi(
    db: GraphDataBase, nodes: Mapping[int, Mapping[str, Any]], roi: Roi
) -> None:
    """Make the nodes positioned in ``roi`` (world units) exactly ``nodes``.

    ``nodes`` maps node id to its attributes (``position`` in world units
    and the database's other node attributes). A node positioned outside
    ``roi`` is an error: it could not be cleaned up by a rerun.
    """
    position = db.position_attribute  # type: ignore[attr-defined]
    outside = [
        node_id for node_id, data in nodes.items() if not _inside(data[position], roi)
    ]
    if outside:
        raise ValueError(
            f"{len(outside)} node(s) (e.g. id {outside[0]}) are positioned outside "
            f"the block's write region {roi}"
        )
    # One transaction: the DELETE stays uncommitted until the bulk insert
    # commits, so a crash in between leaves the previous rows in place.
    db._update_query(_delete_statement(db, roi), commit=False)  # type: ignore[attr-defined]
    if nodes:
        db.bulk_write_nodes(nodes)  # type: ignore[attr-defined]
    else:
        db._commit()  # type: ignore[attr-defined]


def _inside(point: Any, roi: Roi) -> bool:
    return all(
        begin <= float(p) < end
        for p, begin, end in zip(point, roi.begin, roi.end, strict=True)
    )


def _delete_statement(db: GraphDataBase, roi: Roi) -> str:
    position = db.position_attribute  # type: ignore[attr-defined]
    ndims = db.ndims  # type: ignore[attr-defined]
    if isinstance(db, SQLiteGraphDataBase):
        columns = [f"{position}_{d}" for d in range(ndims)] if ndims > 1 else [position]
    elif isinstance(db, PgSQLGraphDatabase):
        columns = (
            [f"{position}[{d + 1}]" for d in range(ndims)] if ndims > 1 else [position]
        )
    else:
        raise TypeError(f"no node replacement for {type(db).__name__}")
    conditions = [
        f"{column} >= {float(begin)!r} AND {column} < {float(end)!r}"
        for column, begin, end in zip(columns, roi.begin, roi.end, strict=True)
    ]
    return f"DELETE FROM {db.nodes_table_name} WHERE " + " AND ".join(conditions)  # type: ignore[attr-defined]
