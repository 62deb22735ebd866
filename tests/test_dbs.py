"""Graph databases: configs round trip, graphs are written and read back with
user attributes, drop/drop_edges, SQL injection is refused, and an
unreachable server is a quick ConnectionError."""

from __future__ import annotations

import time

import networkx as nx
import pytest
import yaml
from funlib.geometry import Roi
from pydantic import TypeAdapter, ValidationError

from volara.dbs import DB, AnyDB, PostgreSQL, SQLite

ANY_DB: TypeAdapter = TypeAdapter(AnyDB)
EVERYWHERE = Roi((-1000, -1000, -1000), (3000, 3000, 3000))
NODE_ATTRS = {"score": "float", "embedding": 2, "label": "int"}
EDGE_ATTRS = {"adj_weight": "float", "lr_weight": "float"}


def test_db_configs_round_trip_through_json_and_yaml(tmp_path):
    configs = [
        SQLite(
            path=tmp_path / "g.sqlite", node_attrs=NODE_ATTRS, edge_attrs=EDGE_ATTRS
        ),
        SQLite(path="rel/g.db", ndim=2),
        PostgreSQL(
            host="db.example.org",
            port=5433,
            name="frags",
            user="me",
            password="pw",
            edge_attrs={"adj_weight": "float"},
        ),
        PostgreSQL(),
    ]
    for db in configs:
        from_json = ANY_DB.validate_json(db.model_dump_json())
        assert type(from_json) is type(db) and from_json == db
        from_yaml = ANY_DB.validate_python(
            yaml.safe_load(yaml.safe_dump(db.model_dump(mode="json")))
        )
        assert type(from_yaml) is type(db) and from_yaml == db


def test_db_types_are_unique():
    tags = [cls.model_fields["db_type"].default for cls in (SQLite, PostgreSQL)]
    assert sorted(tags) == ["postgresql", "sqlite"]


@pytest.mark.parametrize(
    "name",
    ["x; DROP TABLE nodes", "nodes--", "a b", "Robert'); DROP DATABASE postgres;--"],
)
def test_postgres_names_with_sql_are_refused(name):
    with pytest.raises(ValidationError, match="not a valid identifier"):
        PostgreSQL(name=name)


def test_postgres_uppercase_names_are_refused():
    with pytest.raises(ValidationError, match="lowercase"):
        PostgreSQL(name="Volara")


@pytest.mark.parametrize("field", ["node_attrs", "edge_attrs"])
def test_attribute_names_with_sql_are_refused(tmp_path, field):
    with pytest.raises(ValidationError, match="not a valid identifier"):
        SQLite(path=tmp_path / "g.db", **{field: {"x; DROP TABLE nodes": "float"}})


@pytest.mark.parametrize(
    "spec", ["float); DROP TABLE nodes; --", "__import__('os')", 0, True]
)
def test_attribute_types_are_parsed_never_evaluated(tmp_path, spec):
    with pytest.raises(ValidationError, match=r"attribute 'x'|node_attrs\.x"):
        SQLite(path=tmp_path / "g.db", node_attrs={"x": spec})


def _graph() -> nx.Graph:
    graph = nx.Graph()
    graph.add_node(
        1,
        position=(1.0, 2.0, 3.0),
        size=5,
        filtered=False,
        score=0.5,
        embedding=(0.25, 0.75),
        label=3,
    )
    graph.add_node(
        2,
        position=(40.0, 50.0, 60.0),
        size=7,
        filtered=True,
        score=0.125,
        embedding=(1.0, -1.0),
        label=4,
    )
    graph.add_node(
        3,
        position=(5.0, 5.0, 5.0),
        size=1,
        filtered=False,
        score=1.0,
        embedding=(0.0, 0.0),
        label=0,
    )
    graph.add_edge(1, 2, distance=3.5, adj_weight=0.75, lr_weight=-0.5)
    graph.add_edge(2, 3, distance=1.0, adj_weight=0.25, lr_weight=0.5)
    return graph


def _check_graph_roundtrip(db: DB) -> None:
    db.init()
    assert db.exists()
    writer = db.open("r+")
    writer.write_graph(_graph())
    writer.close()

    graph = db.open("r").read_graph(EVERYWHERE)
    expected = _graph()
    assert sorted(graph.nodes) == [1, 2, 3]
    for node, attrs in expected.nodes(data=True):
        got = graph.nodes[node]
        assert tuple(got["position"]) == attrs["position"]
        assert got["size"] == attrs["size"]
        assert bool(got["filtered"]) == attrs["filtered"]
        assert got["score"] == attrs["score"]
        assert tuple(got["embedding"]) == attrs["embedding"]
        assert got["label"] == attrs["label"]
    assert {frozenset(e) for e in graph.edges} == {frozenset((1, 2)), frozenset((2, 3))}
    assert graph.edges[1, 2]["adj_weight"] == 0.75
    assert graph.edges[1, 2]["lr_weight"] == -0.5
    assert graph.edges[2, 3]["distance"] == 1.0
    # reading a region returns the nodes inside it
    near_origin = db.open("r").read_graph(
        Roi((0, 0, 0), (10, 10, 10)), read_edges=False
    )
    assert sorted(near_origin.nodes) == [1, 3]

    # init on an existing database keeps its content
    db.init()
    assert db.open("r").read_graph(EVERYWHERE).number_of_nodes() == 3

    db.drop_edges()
    graph = db.open("r").read_graph(EVERYWHERE)
    assert graph.number_of_nodes() == 3 and graph.number_of_edges() == 0
    # edges can be written again after drop_edges
    writer = db.open("r+")
    writer.write_graph(_graph(), write_nodes=False)
    writer.close()
    assert db.open("r").read_graph(EVERYWHERE).number_of_edges() == 2

    db.drop()
    assert not db.exists()
    with pytest.raises(FileNotFoundError, match="db.init"):
        db.open("r")


def test_sqlite_graph_roundtrip(tmp_path):
    db = SQLite(
        path=tmp_path / "dbs" / "g.sqlite", node_attrs=NODE_ATTRS, edge_attrs=EDGE_ATTRS
    )
    _check_graph_roundtrip(db)
    assert not (tmp_path / "dbs" / "g.sqlite").exists()
    assert not (tmp_path / "dbs" / "g-meta.json").exists()


@pytest.mark.postgres
def test_postgres_graph_roundtrip(postgres):
    db = postgres.model_copy(
        update={"node_attrs": NODE_ATTRS, "edge_attrs": EDGE_ATTRS}
    )
    assert not db.exists()
    _check_graph_roundtrip(db)


def test_reopening_with_other_attributes_is_an_error(tmp_path):
    SQLite(path=tmp_path / "g.db", edge_attrs={"adj_weight": "float"}).init()
    other = SQLite(path=tmp_path / "g.db", edge_attrs={"lr_weight": "float"})
    with pytest.raises(ValueError, match="'lr_weight' is missing"):
        other.init()
    with pytest.raises(ValueError, match="'lr_weight' is missing"):
        other.open("r")


def test_sqlite_in_an_unwritable_place_is_a_clear_error(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    db = SQLite(path=tmp_path / "afile" / "g.db")
    with pytest.raises(OSError, match="afile"):
        db.init()


def test_unreachable_postgres_is_a_quick_connection_error():
    db = PostgreSQL(host="127.0.0.1", port=1, user="postgres", name="volara_nowhere")
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:1"):
        db.init()
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:1"):
        db.check_connection()
    assert time.monotonic() - start < 10
