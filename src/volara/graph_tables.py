"""Columnar reads of graph tables, for tasks that handle millions of rows.

funlib.persistence returns one Python dict per node or edge, which costs
seconds per million rows; these functions run one plain ``SELECT`` through
the open database's cursor and return numpy columns instead. They read the
same tables funlib writes, for SQLite (vector attributes exploded into
``attr_0, attr_1, ...`` columns) and PostgreSQL (vector attributes as array
columns).

SQL is built from table and attribute names, so every name is checked to be
a plain identifier first; values (ROI bounds, ids) are numbers formatted by
Python, never user text.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import numpy as np
from funlib.geometry import Roi
from funlib.persistence.graphs import SQLiteGraphDataBase
from funlib.persistence.types import Vec

from .kernels.agglomeration import lookup_rows
from .utils import check_identifier

logger = logging.getLogger(__name__)

Columns = dict[str, np.ndarray]
_FETCH_ROWS = 1_000_000
_IDS_PER_QUERY = 10_000
# Above this fraction of all nodes, scanning every edge beats index look-ups.
_SCAN_FRACTION = 0.25
# PostgreSQL type oids of the columns read: their binary COPY formats
_BINARY_FORMATS = {16: "?", 21: ">i2", 23: ">i4", 20: ">i8", 700: ">f4", 701: ">f8"}


def _attr_columns(graph_db, attr: str, attr_type, alias: str) -> list[str]:
    check_identifier(attr, "attribute name")
    if not isinstance(attr_type, Vec):
        return [f"{alias}.{attr}"]
    if isinstance(graph_db, SQLiteGraphDataBase):
        return [f"{alias}.{attr}_{d}" for d in range(attr_type.size)]
    return [f"{alias}.{attr}[{d + 1}]" for d in range(attr_type.size)]


def _tables(graph_db) -> tuple[str, str, str, str]:
    nodes = check_identifier(graph_db.nodes_table_name, "nodes table")
    edges = check_identifier(graph_db.edges_table_name, "edges table")
    u, v = (check_identifier(name, "edge endpoint") for name in graph_db.endpoint_names)
    return nodes, edges, u, v


def roi_condition(graph_db, roi: Roi, alias: str = "n") -> str:
    """SQL condition: the node's position lies in ``roi`` (begin inclusive,
    end exclusive, world units); unbounded axes are not restricted."""
    position = graph_db.position_attribute
    expressions = _attr_columns(
        graph_db, position, graph_db.node_attrs[position], alias
    )
    parts = []
    for dim, expression in enumerate(expressions):
        begin, end = roi.begin[dim], roi.end[dim]
        if begin is not None:
            parts.append(f"{expression} >= {float(begin)!r}")
        if end is not None:
            parts.append(f"{expression} < {float(end)!r}")
    return " AND ".join(parts) if parts else "1 = 1"


def _select(graph_db, query: str, dtype: np.dtype) -> np.ndarray:
    if not isinstance(graph_db, SQLiteGraphDataBase):
        table = _copy_select(graph_db, query, dtype)
        if table is not None:
            return table
    cursor = graph_db.cur
    cursor.execute(query)
    chunks = []
    while True:
        rows = cursor.fetchmany(_FETCH_ROWS)
        if not rows:
            break
        chunks.append(np.array(rows, dtype=dtype))
    if not chunks:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(chunks)


def _copy_select(graph_db, query: str, dtype: np.dtype) -> np.ndarray | None:
    """PostgreSQL: the rows of ``query`` through one binary ``COPY``, parsed
    by numpy: several times faster than fetching millions of rows as Python
    tuples. ``None`` if a column is not a fixed-width number or a value is
    NULL (the caller then fetches rows)."""
    cursor = graph_db.cur
    cursor.execute(f"{query} LIMIT 0")
    formats = [_BINARY_FORMATS.get(column.type_code) for column in cursor.description]
    if None in formats or len(formats) != len(dtype.names or ()):
        return None
    row = np.dtype(
        [("fields", ">i2")]
        + [
            field
            for i, value in enumerate(formats)
            for field in ((f"length{i}", ">i4"), (f"value{i}", value))
        ]
    )
    buffer = io.BytesIO()
    cursor.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT binary)", buffer)
    data = buffer.getbuffer()
    # header: 11-byte signature, flags, extension length; trailer: -1
    start = 19 + int.from_bytes(data[15:19], "big")
    body = data[start:-2]
    if len(body) % row.itemsize:
        return None
    rows = np.frombuffer(body, row)
    for i, value in enumerate(formats):
        if np.any(rows[f"length{i}"] != np.dtype(value).itemsize):
            return None
    table = np.empty(rows.size, dtype)
    for i, name in enumerate(dtype.names or ()):
        table[name] = rows[f"value{i}"]
    return table


def _value_selects(
    graph_db, attrs: Sequence[str], attr_types: dict, alias: str
) -> tuple[list[str], list[tuple[str, str]]]:
    """SELECT expressions and structured dtype fields for numeric attributes,
    NULL read as NaN. Float columns use ``COALESCE(x, 'NaN')`` (SQLite gives
    the text, which numpy parses; PostgreSQL casts it to a REAL NaN); integer
    and boolean columns get a separate NULL flag."""
    selects, fields = [], []
    for attr in attrs:
        if attr not in attr_types:
            raise ValueError(f"attribute {attr!r} is not stored in the graph database")
        attr_type = attr_types[attr]
        is_float = (
            attr_type.dtype if isinstance(attr_type, Vec) else attr_type
        ) is float
        for i, column in enumerate(_attr_columns(graph_db, attr, attr_type, alias)):
            if is_float:
                selects.append(f"COALESCE({column}, 'NaN')")
                fields.append((f"{attr}:{i}", "f8"))
            else:
                selects += [
                    f"COALESCE({column}, 0)",
                    f"CASE WHEN {column} IS NULL THEN 1 ELSE 0 END",
                ]
                fields += [(f"{attr}:{i}", "f8"), (f"{attr}:{i}:null", "i1")]
    return selects, fields


def _to_columns(table: np.ndarray, attrs: Sequence[str], attr_types: dict) -> Columns:
    columns: Columns = {}
    for attr in attrs:
        is_vec = isinstance(attr_types[attr], Vec)
        parts = []
        for i in range(attr_types[attr].size if is_vec else 1):
            values = table[f"{attr}:{i}"].astype(np.float64)
            if f"{attr}:{i}:null" in (table.dtype.names or ()):
                values[table[f"{attr}:{i}:null"] != 0] = np.nan
            parts.append(values)
        columns[attr] = np.stack(parts, axis=1) if is_vec else parts[0]
    return columns


def _id_chunks(ids: np.ndarray) -> list[str]:
    """Comma-separated id lists of at most `_IDS_PER_QUERY` ids each."""
    ids = np.unique(np.asarray(ids, dtype=np.uint64))
    return [
        ", ".join(str(i) for i in ids[start : start + _IDS_PER_QUERY].tolist())
        for start in range(0, ids.size, _IDS_PER_QUERY)
    ]


def read_node_columns(
    graph_db,
    attrs: Sequence[str],
    roi: Roi | None = None,
    ids: np.ndarray | None = None,
) -> Columns:
    """Node ids (``"id"``, uint64) and numeric attributes (float64, NaN for
    NULL; vectors as ``(n, size)``) of the nodes in ``roi`` or with the
    given ``ids`` (or of all nodes). Rows are sorted by id."""
    nodes, _, _, _ = _tables(graph_db)
    selects, fields = _value_selects(graph_db, attrs, graph_db.node_attrs, "n")
    columns = ", ".join(["n.id", *selects])
    dtype = np.dtype([("id", "u8"), *fields])
    if ids is not None:
        parts = [
            _select(
                graph_db,
                f"SELECT {columns} FROM {nodes} AS n WHERE n.id IN ({chunk})",
                dtype,
            )
            for chunk in _id_chunks(ids)
        ]
        table = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    else:
        where = f" WHERE {roi_condition(graph_db, roi)}" if roi is not None else ""
        table = _select(graph_db, f"SELECT {columns} FROM {nodes} AS n{where}", dtype)
    table = table[np.argsort(table["id"], kind="stable")]
    return {"id": table["id"].copy(), **_to_columns(table, attrs, graph_db.node_attrs)}


def read_edge_columns(
    graph_db,
    attrs: Sequence[str],
    u_ids: np.ndarray | None = None,
    v_ids: np.ndarray | None = None,
) -> Columns:
    """Endpoints (``"u"``, ``"v"``, uint64) and numeric attributes (float64,
    NaN for NULL) of the edges whose ``u`` is one of ``u_ids``, or whose
    ``v`` is one of ``v_ids`` (give at most one), or of all edges.

    A few ids are looked up through an index (the primary key starts with
    ``u``; `index_edge_ends` adds one for ``v``); for many ids one scan of the
    table, filtered in numpy, is faster than any join."""
    if u_ids is not None and v_ids is not None:
        raise ValueError("read_edge_columns: give u_ids or v_ids, not both")
    nodes, edges, u, v = _tables(graph_db)
    selects, fields = _value_selects(graph_db, attrs, graph_db.edge_attrs, "e")
    query = f"SELECT {', '.join([f'e.{u}', f'e.{v}', *selects])} FROM {edges} AS e"
    dtype = np.dtype([("u", "u8"), ("v", "u8"), *fields])
    ids, column, end = (u_ids, u, "u") if v_ids is None else (v_ids, v, "v")
    if ids is None:
        table = _select(graph_db, query, dtype)
    else:
        graph_db.cur.execute(f"SELECT COUNT(*) FROM {nodes}")
        num_nodes = graph_db.cur.fetchone()[0]
        if ids.size > _SCAN_FRACTION * num_nodes:
            table = _select(graph_db, query, dtype)
            table = table[np.isin(table[end], ids)]
        else:
            parts = [
                _select(graph_db, f"{query} WHERE e.{column} IN ({chunk})", dtype)
                for chunk in _id_chunks(ids)
            ]
            table = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    return {
        "u": table["u"].copy(),
        "v": table["v"].copy(),
        **_to_columns(table, attrs, graph_db.edge_attrs),
    }


def index_edge_ends(graph_db) -> None:
    """Add an index on the edges' ``v`` column (if missing), so that
    `read_edge_columns` finds the edges of given ``v`` ids without scanning
    the table; the primary key already serves ``u``."""
    _, edges, _, v = _tables(graph_db)
    graph_db.cur.execute(
        f"CREATE INDEX IF NOT EXISTS {edges}_{v}_index ON {edges}({v})"
    )
    graph_db._commit()


def inside_roi(positions: np.ndarray, roi: Roi) -> np.ndarray:
    """Which positions (rows, world units) lie in ``roi``: begin inclusive,
    end exclusive, as `roi_condition` selects them."""
    begin = np.array(roi.begin, dtype=np.float64)
    end = np.array(roi.end, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, begin.size)
    return np.all((positions >= begin) & (positions < end), axis=1)


def owned_pairs(
    write_roi: Roi, u: np.ndarray, v: np.ndarray, nodes: Columns
) -> np.ndarray:
    """Which pairs a block writes: both fragments have a node, and ``u``'s
    position lies in ``write_roi`` (begin inclusive, end exclusive, world
    units). Write regions tile the volume, so each pair has one owner."""
    pos_u, found_u = lookup_rows(u, nodes["id"], nodes["position"])
    _, found_v = lookup_rows(v, nodes["id"], nodes["position"])
    missing = ~(found_u & found_v)
    if missing.any():
        logger.debug(
            "%d fragment pairs in %s skipped: a fragment has no node in the database",
            int(missing.sum()),
            write_roi,
        )
    return ~missing & inside_roi(pos_u, write_roi)


def write_edge_rows(
    graph_db, u: np.ndarray, v: np.ndarray, columns: dict[str, np.ndarray]
) -> None:
    """Insert edges ``(u[i], v[i])`` with float attributes (NaN is written as
    NULL) through funlib. Edges already stored are kept as they are (SQLite
    ``INSERT OR IGNORE``, PostgreSQL ``ON CONFLICT DO NOTHING``), so a retried
    block adds nothing twice."""
    if u.size == 0:
        return
    names = list(columns)
    values = [
        [None if np.isnan(x) else x for x in columns[name].astype(np.float64).tolist()]
        for name in names
    ]
    edges = {
        (a, b): dict(zip(names, row, strict=True))
        for a, b, *row in zip(u.tolist(), v.tolist(), *values, strict=True)
    }
    # funlib looks up each u's position to filter by ROI; ownership is decided
    # by the caller, so any position passes the unbounded ROI used here.
    nodes = {
        a: {graph_db.position_attribute: (0,) * graph_db.ndims} for a in set(u.tolist())
    }
    graph_db.write_edges(nodes, edges, roi=None, attributes=names)
