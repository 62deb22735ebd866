"""volara 1.0.5's database surface on volara 2: opening a missing database
raises `RuntimeError` (and creates nothing), 1.0.5's
``try: open("r") except RuntimeError: open("w")`` works, and `spoof` copies a
graph for runs that must not touch the real one."""

from __future__ import annotations

import networkx as nx
import psycopg2
import pytest
from funlib.geometry import Roi

from conftest import PG_HOST, PG_PORT, PG_USER
from volara.dbs import DB, DatabaseNotFoundError, PostgreSQL, SQLite

EVERYWHERE = Roi((-1000, -1000, -1000), (3000, 3000, 3000))


def server_has_database(name: str) -> bool:
    conn = psycopg2.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=5
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cur.fetchone() is not None
    finally:
        conn.close()


def write_two_nodes(db: DB) -> None:
    graph = nx.Graph()
    graph.add_node(1, position=(1.0, 2.0, 3.0), size=4, filtered=False)
    graph.add_node(2, position=(5.0, 2.0, 3.0), size=6, filtered=True)
    graph.add_edge(1, 2, distance=4.0, score=0.25)
    writer = db.open("r+")
    writer.write_graph(graph)
    writer.close()


def graph_of(db: DB) -> tuple[dict, dict]:
    reader = db.open("r")
    try:
        graph = reader.read_graph(EVERYWHERE)
    finally:
        reader.close()
    nodes = {n: (tuple(d["position"]), d["size"]) for n, d in graph.nodes(data=True)}
    edges = {frozenset(e): round(d["score"], 5) for *e, d in graph.edges(data=True)}
    return nodes, edges


def check_volara_1_open_pattern(db: DB) -> None:
    for mode in ("r", "r+"):
        with pytest.raises(RuntimeError, match="no graph database at") as error:
            db.open(mode)
        assert isinstance(error.value, DatabaseNotFoundError)
        assert isinstance(error.value, FileNotFoundError)  # volara 2's type too
        assert db.location in str(error.value) and "db.init()" in str(error.value)
        assert not db.exists(), "a failed open must not create the database"
    # volara 1.0.5's DB.init, written out in user code
    try:
        db.open("r")
    except RuntimeError:
        db.open("w").close()
    assert db.exists()
    write_two_nodes(db)
    assert graph_of(db)[0] == {1: ((1.0, 2.0, 3.0), 4), 2: ((5.0, 2.0, 3.0), 6)}


def test_sqlite_missing_database_is_a_runtime_error(tmp_path):
    db = SQLite(path=tmp_path / "graphs" / "g.sqlite", edge_attrs={"score": "float"})
    with pytest.raises(RuntimeError):
        db.open("r")
    assert not (tmp_path / "graphs").exists(), "a failed open must create nothing"
    check_volara_1_open_pattern(db)


@pytest.mark.postgres
def test_postgres_missing_database_is_a_runtime_error(postgres):
    db = postgres.model_copy(update={"edge_attrs": {"score": "float"}})
    assert not server_has_database(db.name)
    with pytest.raises(RuntimeError):
        db.open("r")
    # volara 1.0.5 created an empty database here; volara 2 creates nothing
    assert not server_has_database(db.name)
    check_volara_1_open_pattern(db)


def test_sqlite_spoof_copies_the_graph_and_leaves_the_real_one(tmp_path):
    db = SQLite(path=tmp_path / "g.sqlite", edge_attrs={"score": "float"})
    db.init()
    write_two_nodes(db)
    real = graph_of(db)
    spoofed = db.spoof(tmp_path / "spoof")
    assert spoofed.path == tmp_path / "spoof" / "spoof_g.sqlite"
    assert graph_of(spoofed) == real
    # writing into the spoof leaves the real graph as it was
    writer = spoofed.open("r+")
    writer.write_nodes({3: {"position": (9.0, 9.0, 9.0), "size": 1, "filtered": False}})
    writer.close()
    assert graph_of(db) == real and 3 in graph_of(spoofed)[0]
    # volara 1.0.5's default place, beside the real file; a fresh copy each time
    beside = db.spoof()
    assert beside.path == tmp_path / "spoofed_g.sqlite"
    assert graph_of(beside) == real
    assert not db.spoof(tmp_path / "spoof", nodes=False).exists()


@pytest.mark.postgres
def test_postgres_spoof_is_a_database_of_its_own(postgres):
    db = postgres.model_copy(update={"edge_attrs": {"score": "float"}})
    db.init()
    write_two_nodes(db)
    real = graph_of(db)
    spoofed = db.spoof()
    try:
        assert isinstance(spoofed, PostgreSQL) and spoofed.name == f"spoof_{db.name}"
        assert graph_of(spoofed) == real
        spoofed.drop_edges()
        assert graph_of(db) == real
    finally:
        spoofed.drop_database()
    assert not server_has_database(spoofed.name)
    assert server_has_database(db.name)
