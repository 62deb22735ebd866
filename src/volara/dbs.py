"""Graph databases of fragments (nodes) and their adjacencies (edges).

A DB model describes where the graph lives and which attributes its nodes and
edges carry; `DB.open` returns the `funlib.persistence` graph database that
does the reading and writing. Every node has a ``position`` (center of mass,
world units), a ``size`` (voxels) and a ``filtered`` flag; every edge a
``distance`` (world units). Tasks add their own attributes through
``node_attrs`` / ``edge_attrs``.

funlib.persistence builds SQL by string formatting, so every table, column and
database name is checked to be a plain identifier before it reaches it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from funlib.persistence.graphs import PgSQLGraphDatabase, SQLiteGraphDataBase
from funlib.persistence.graphs.graph_database import GraphDataBase
from funlib.persistence.types import Vec
from pydantic import Field, StrictInt, StrictStr, field_validator

from .utils import StrictBaseModel, check_identifier

logger = logging.getLogger(__name__)

AttrsDict = dict[str, Any]

_SCALAR_TYPES: dict[str, type] = {"float": float, "int": int, "bool": bool, "str": str}
_VEC_TYPE = re.compile(r"^Vec\(\s*(float|int|bool)\s*,\s*(\d+)\s*\)$")
SQLITE_BUSY_TIMEOUT_MS = 120_000


class DatabaseNotFoundError(FileNotFoundError, RuntimeError):
    """There is no graph database where a config points.

    A `FileNotFoundError`, and a `RuntimeError` as volara 1.0.5 raised, so
    that 1.0.5's ``try: db.open("r") except RuntimeError: db.open("w")``
    keeps working."""


def parse_attr_type(name: str, spec: str | int) -> Any:
    """The funlib type of an attribute spec: ``"float"``, ``"int"``,
    ``"bool"``, ``"str"``, ``"Vec(float, 3)"`` or an integer ``n`` (a vector
    of ``n`` floats). Anything else is refused (specs are never evaluated)."""
    if isinstance(spec, bool):
        raise ValueError(f"attribute {name!r}: type {spec!r} is not a type spec")
    if isinstance(spec, int):
        if spec < 1:
            raise ValueError(f"attribute {name!r}: vector length {spec} must be >= 1")
        return Vec(float, spec)
    if spec in _SCALAR_TYPES:
        return _SCALAR_TYPES[spec]
    match = _VEC_TYPE.match(spec)
    if match:
        return Vec(_SCALAR_TYPES[match.group(1)], int(match.group(2)))
    raise ValueError(
        f"attribute {name!r}: unknown type {spec!r}; use 'float', 'int', 'bool', "
        "'str', 'Vec(float, N)' or an integer N for N floats"
    )


class DB(StrictBaseModel, ABC):
    """What every graph database has: the attributes of its nodes and edges."""

    # strict: YAML's `yes`/`true` must not pass as the vector length 1
    node_attrs: dict[str, StrictStr | StrictInt] | None = None
    """Extra node attributes and their types, added to the defaults
    (``position``, ``size``, ``filtered``), e.g. ``{"raw_intensity": "float"}``.
    Types: ``"float"``, ``"int"``, ``"bool"``, ``"str"``, ``"Vec(float, N)"``
    or an integer N for a vector of N floats."""
    edge_attrs: dict[str, StrictStr | StrictInt] | None = None
    """Extra edge attributes and their types, added to the default
    (``distance``), e.g. ``{"adj_weight": "float", "lr_weight": "float"}``.
    Tasks such as `AffAgglom` write their scores into these columns."""
    ndim: int = 3
    """Number of spatial dimensions of node positions."""

    @field_validator("node_attrs", "edge_attrs")
    @classmethod
    def _check_attrs(cls, attrs):
        for name, spec in (attrs or {}).items():
            check_identifier(name, "attribute name")
            parse_attr_type(name, spec)
        return attrs

    @field_validator("ndim")
    @classmethod
    def _check_ndim(cls, ndim):
        if ndim < 2:
            raise ValueError(f"ndim must be at least 2, got {ndim}")
        return ndim

    @property
    def default_node_attrs(self) -> AttrsDict:
        """``position`` (center of mass, world units), ``size`` (voxels) and
        ``filtered`` (dropped by a fragment filter)."""
        return {"position": Vec(float, self.ndim), "size": int, "filtered": bool}

    @property
    def default_edge_attrs(self) -> AttrsDict:
        """``distance``: distance between the two fragments' centers of mass,
        in world units."""
        return {"distance": float}

    @property
    def graph_attrs(self) -> tuple[AttrsDict, AttrsDict]:
        """All node and edge attribute types: the defaults plus the user's."""
        nodes = {
            name: parse_attr_type(name, spec)
            for name, spec in (self.node_attrs or {}).items()
        }
        edges = {
            name: parse_attr_type(name, spec)
            for name, spec in (self.edge_attrs or {}).items()
        }
        return {**self.default_node_attrs, **nodes}, {
            **self.default_edge_attrs,
            **edges,
        }

    def require_edge_attrs(
        self, names: Iterable[str], field: str, what: str = "the database"
    ) -> None:
        """Raise a clear error, naming the task's ``field`` (e.g.
        ``"GraphMWS.weights"``), for a name that is not one of this config's
        edge attributes."""
        _, edge_attrs = self.graph_attrs
        for name in names:
            if name not in edge_attrs:
                raise ValueError(
                    f"{field}: {name!r} is not an edge attribute of {what} (it has "
                    f"{sorted(edge_attrs)}). Add it to the db's edge_attrs, e.g. "
                    f'edge_attrs={{"{name}": "float"}}, or remove it from '
                    f"{field.rsplit('.', 1)[-1]}."
                )

    @property
    @abstractmethod
    def id(self) -> str:
        """A short name of this database, used in task names."""

    @abstractmethod
    def _connect(self, mode: str, with_attrs: bool = True) -> GraphDataBase:
        """Open the backend; ``mode`` is funlib's ``r``, ``r+`` or ``w``."""

    @abstractmethod
    def exists(self) -> bool:
        """Whether the graph tables and metadata have been created."""

    def open(self, mode: str = "r") -> GraphDataBase:
        """Open the graph database (``r``: read, ``r+``: read and write,
        ``w``: create, deleting what was there). ``r`` and ``r+`` on a
        database that does not exist raise `DatabaseNotFoundError` (a
        `RuntimeError`, as in volara 1.0.5) and create nothing.

        An existing database is opened with all the attributes it was
        created with, which must include those this config names: a config
        naming fewer (e.g. not the count columns hierarchical agglomeration
        adds) still opens it."""
        if mode not in ("r", "r+", "w"):
            raise ValueError(f"mode must be 'r', 'r+' or 'w', got {mode!r}")
        if mode == "w":
            return self._connect(mode)
        self._check_stored_attrs()
        return self._connect(mode, with_attrs=False)

    def check_usable(self) -> None:
        """Raise a clear error if a task could not use this database: the
        server is unreachable, the location cannot be written, or an existing
        graph has other attributes than this config names. Creates nothing."""
        if self.exists():
            self._check_stored_attrs()
        else:
            self._check_creatable()

    def _check_creatable(self) -> None:
        """Raise if the database could not be created (backends that can tell
        without creating anything)."""

    def init(self) -> None:
        """Create the database if it does not exist yet; check that an existing
        one has the attributes this config names."""
        if self.exists():
            self._check_stored_attrs()
        else:
            self._connect("w").close()  # type: ignore[attr-defined]

    def _check_stored_attrs(self) -> None:
        if not self.exists():
            raise DatabaseNotFoundError(
                f"{type(self).__name__}: no graph database at {self.location}. "
                "Run the task that creates it first (e.g. ExtractFrags), or call "
                "db.init()."
            )
        stored = self._connect("r", with_attrs=False)
        try:
            want_nodes, want_edges = self.graph_attrs
            problems = _attr_differences("node", want_nodes, stored.node_attrs)
            problems += _attr_differences("edge", want_edges, stored.edge_attrs)
        finally:
            stored.close()  # type: ignore[attr-defined]
        if problems:
            raise ValueError(
                f"{type(self).__name__}: the database at {self.location} was created "
                "with other attributes than this config names:\n  "
                + "\n  ".join(problems)
                + "\nUse the same node_attrs/edge_attrs as when it was created, or "
                "drop it (db.drop()) to start over."
            )

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the database lives, for messages."""

    @abstractmethod
    def drop(self) -> None:
        """Delete all nodes, edges and metadata."""

    def sibling(self, tag: str) -> DB:
        """Another database of the same kind and place, told apart by
        ``tag`` (e.g. for the segment graphs of hierarchical agglomeration)."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot name a sibling database: implement "
            "sibling(tag)"
        )

    def _spoof_target(self, spoof_dir: Path | None) -> DB:
        """This config pointing at a spoof location: in ``spoof_dir``, or
        beside the real database if ``None``."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot be spoofed (benchmarked): implement "
            "_spoof_target to return a copy of the config at another location"
        )

    def spoof(self, spoof_dir: Path | str | None = None, nodes: bool = True) -> DB:
        """A copy of this database at another place, for runs that must not
        touch the real one (`BlockwiseTask.benchmark`).

        The copy lives in ``spoof_dir`` (``spoof_<name>``), or beside the
        real database (``spoofed_<name>``) if ``spoof_dir`` is None. Whatever
        was there is deleted. With ``nodes`` (the default) the copy starts
        with the real graph, nodes and edges, if the real database exists;
        otherwise it starts without any database.
        """
        spoofed = self._spoof_target(None if spoof_dir is None else Path(spoof_dir))
        if spoofed.location == self.location:
            raise ValueError(f"cannot spoof {self.location} onto itself")
        spoofed.drop()
        if nodes and self.exists():
            source = self.open("r")
            target = spoofed._connect("w")
            try:
                target.write_graph(source.read_graph())
            finally:
                source.close()  # type: ignore[attr-defined]
                target.close()  # type: ignore[attr-defined]
        return spoofed

    def drop_edges(self) -> None:
        """Delete all edges, keeping nodes and metadata."""
        if not self.exists():
            return
        db = self._connect("r+", with_attrs=False)
        try:
            db._drop_edges()  # type: ignore[attr-defined]
            db._create_tables()  # type: ignore[attr-defined]
            db._commit()  # type: ignore[attr-defined]
        finally:
            db.close()  # type: ignore[attr-defined]


def _attr_differences(kind: str, wanted: AttrsDict, stored: AttrsDict) -> list[str]:
    problems = []
    for name, attr_type in wanted.items():
        if name not in stored:
            problems.append(f"{kind} attribute {name!r} is missing from the database")
        elif stored[name] != attr_type:
            problems.append(
                f"{kind} attribute {name!r}: config says {attr_type}, database has "
                f"{stored[name]}"
            )
    return problems


class SQLite(DB):
    """A graph in an SQLite file: no server needed; fine for many workers on
    one machine."""

    db_type: Literal["sqlite"] = "sqlite"
    """Tag that selects this class when a config is loaded."""
    path: Path
    """The SQLite file. A JSON file ``<stem>-meta.json`` beside it holds the
    graph's metadata."""

    @property
    def id(self) -> str:
        return self.path.stem

    @property
    def location(self) -> str:
        return str(self.path)

    @property
    def meta_path(self) -> Path:
        return self.path.parent / f"{self.path.stem}-meta.json"

    def exists(self) -> bool:
        return self.path.exists() and self.meta_path.exists()

    def _check_creatable(self) -> None:
        if self.path.is_file():
            self._check_sqlite_file()
            return
        existing = self.path.parent
        while not existing.exists():
            existing = existing.parent
        if self.path.is_dir() or not existing.is_dir():
            raise PermissionError(
                f"SQLite.path: cannot create {self.path}: "
                f"{self.path if self.path.is_dir() else existing} is not a "
                "directory it could be created in. Choose another path."
            )
        if not os.access(existing, os.W_OK):
            raise PermissionError(
                f"SQLite.path: cannot create {self.path}: {existing} is not "
                "writable. Choose a writable location."
            )

    def _check_sqlite_file(self) -> None:
        try:
            connection = sqlite3.connect(
                f"{self.path.absolute().as_uri()}?mode=ro", uri=True
            )
            try:
                connection.execute("PRAGMA schema_version").fetchone()
            finally:
                connection.close()
        except sqlite3.DatabaseError as e:
            raise ValueError(
                f"SQLite.path: {self.path} exists but is not an SQLite database "
                f"({e}). Point path at another file, or delete this one."
            ) from e

    def _connect(self, mode: str, with_attrs: bool = True) -> SQLiteGraphDataBase:
        node_attrs, edge_attrs = self.graph_attrs if with_attrs else (None, None)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = SQLiteGraphDataBase(
                self.path,
                position_attribute="position",
                node_attrs=node_attrs,  # type: ignore[arg-type]
                edge_attrs=edge_attrs,  # type: ignore[arg-type]
                mode=mode,
            )
        except (sqlite3.OperationalError, PermissionError) as e:
            raise PermissionError(
                f"SQLite.path: cannot open {self.path} ({e}). Choose a writable "
                "location."
            ) from e
        except json.JSONDecodeError as e:
            raise self._not_a_graph(e) from e
        try:
            # Several workers write one file at once: WAL lets readers and a
            # writer proceed together, and the busy timeout makes writers
            # queue instead of failing with "database is locked".
            db.con.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            db.con.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as e:  # the file is something else
            raise self._not_a_graph(e) from e
        return db

    def _not_a_graph(self, error: Exception) -> ValueError:
        return ValueError(
            f"SQLite.path: {self.path} (or its metadata {self.meta_path.name}) "
            f"is not a volara graph database ({error}). Point path at another "
            "file, or delete these files to start over."
        )

    def sibling(self, tag: str) -> SQLite:
        """A database beside this one, its file named ``<stem>_<tag>``, with
        no extra attributes (give them with ``model_copy``)."""
        check_identifier(tag, "database tag")
        path = self.path.with_name(f"{self.path.stem}_{tag}{self.path.suffix}")
        return self.model_copy(
            update={"path": path, "node_attrs": None, "edge_attrs": None}
        )

    def _spoof_target(self, spoof_dir: Path | None) -> SQLite:
        if spoof_dir is None:
            path = self.path.parent / f"spoofed_{self.path.name}"
        else:
            path = spoof_dir / f"spoof_{self.path.name}"
        return self.model_copy(update={"path": path})

    def drop(self) -> None:
        for path in (
            self.path,
            self.meta_path,
            Path(f"{self.path}-wal"),
            Path(f"{self.path}-shm"),
        ):
            if path.exists():
                path.unlink()


class PostgreSQL(DB):
    """A graph in a PostgreSQL database: for many workers on many machines.
    The database is created on first use. Float attributes (positions,
    scores) are stored as 32-bit ``REAL``: about 7 significant digits."""

    db_type: Literal["postgresql"] = "postgresql"
    """Tag that selects this class when a config is loaded."""
    host: str = "localhost"
    """Host name or address of the PostgreSQL server."""
    port: int | None = None
    """Port of the server; ``None`` uses the default (5432)."""
    name: str = "volara"
    """Database name (lowercase letters, digits and underscores)."""
    user: str | None = None
    """User to connect as; ``None`` uses the current user / PGUSER."""
    password: str | None = None
    """Password; ``None`` relies on trust auth, ``.pgpass`` or PGPASSWORD."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, name):
        check_identifier(name, "PostgreSQL.name")
        if name != name.lower():
            raise ValueError(
                f"PostgreSQL.name {name!r}: use lowercase; PostgreSQL folds unquoted "
                "names to lowercase, so this database could not be reopened"
            )
        return name

    @property
    def id(self) -> str:
        return self.name

    @property
    def location(self) -> str:
        return f"postgresql://{self.host}:{self.port or 5432}/{self.name}"

    def _connect(self, mode: str, with_attrs: bool = True) -> PgSQLGraphDatabase:
        import psycopg2

        node_attrs, edge_attrs = self.graph_attrs if with_attrs else (None, None)
        try:
            return PgSQLGraphDatabase(
                position_attribute="position",
                db_name=self.name,
                db_host=self.host,
                db_user=self.user,
                db_password=self.password,
                db_port=self.port,
                node_attrs=node_attrs,  # type: ignore[arg-type]
                edge_attrs=edge_attrs,  # type: ignore[arg-type]
                mode=mode,
            )
        except psycopg2.OperationalError as e:
            raise ConnectionError(
                f"PostgreSQL: cannot connect to {self.location} as "
                f"{self.user or 'the current user'}: {str(e).strip()}. Check host, "
                "port, user and password, and that the server is running."
            ) from e

    def _server_connection(self, database: str):
        import psycopg2

        try:
            return psycopg2.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self.password,
                dbname=database,
                connect_timeout=10,
            )
        except psycopg2.OperationalError as e:
            raise ConnectionError(
                f"PostgreSQL: cannot connect to {self.location}: {str(e).strip()}. "
                "Check host, port, user and password, and that the server is running."
            ) from e

    def check_connection(self) -> None:
        """Raise a `ConnectionError` naming the server if it cannot be reached."""
        self._server_connection("postgres").close()

    def exists(self) -> bool:
        import psycopg2

        server = self._server_connection("postgres")
        try:
            with server.cursor() as cur:
                cur.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (self.name,)
                )
                if cur.fetchone() is None:
                    return False
        finally:
            server.close()
        conn = self._server_connection(self.name)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT value FROM metadata LIMIT 1")
                return cur.fetchone() is not None
        except psycopg2.errors.UndefinedTable:
            return False
        finally:
            conn.close()

    def sibling(self, tag: str) -> PostgreSQL:
        """A database on the same server named ``<name>_<tag>``, with no
        extra attributes (give them with ``model_copy``)."""
        check_identifier(tag, "database tag")
        name = f"{self.name}_{tag.lower()}"
        if len(name) > 63:
            raise ValueError(
                f"PostgreSQL.name: {name!r} (for the {tag} database) is longer than "
                "PostgreSQL's 63 characters; use a shorter name"
            )
        return self.model_copy(
            update={"name": name, "node_attrs": None, "edge_attrs": None}
        )

    def _spoof_target(self, spoof_dir: Path | None) -> PostgreSQL:
        # PostgreSQL cuts names at 63 bytes: a longer one could not be found
        # again by `exists`
        return self.model_copy(update={"name": f"spoof_{self.name}"[:63]})

    def drop_database(self) -> None:
        """Remove the whole database from the server (`drop` keeps an empty
        database). Does nothing if there is none."""
        import psycopg2

        server = self._server_connection("postgres")
        server.autocommit = True
        try:
            with server.cursor() as cur:
                # the name is a checked identifier (see _check_name)
                cur.execute(f"DROP DATABASE IF EXISTS {self.name}")
        except psycopg2.Error as e:
            raise ConnectionError(
                f"PostgreSQL: cannot drop the database {self.location}: "
                f"{str(e).strip()}. Close other connections to it, or drop it by hand."
            ) from e
        finally:
            server.close()

    def drop(self) -> None:
        if not self.exists():
            return
        db = self._connect("r+", with_attrs=False)
        try:
            db._drop_tables()
        finally:
            db.close()


class ThreadConnections:
    """One open graph database per thread, all closed together.

    A task's block function may run in several threads of one worker
    (``num_cache_workers``), and an SQLite connection must stay in the thread
    that opened it; so each thread opens its own on first use.
    """

    def __init__(self, db: DB, mode: str = "r+"):
        self.db, self.mode = db, mode
        self._local = threading.local()
        self._opened: list[GraphDataBase] = []
        self._lock = threading.Lock()

    def get(self) -> GraphDataBase:
        """This thread's connection."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self.db.open(self.mode)
            with self._lock:
                self._opened.append(connection)
        return connection

    def close_all(self) -> None:
        for connection in self._opened:
            connection.close()  # type: ignore[attr-defined]


AnyDB = Annotated[PostgreSQL | SQLite, Field(discriminator="db_type")]
"""Any built-in graph database, resolved from JSON by its ``db_type``."""
