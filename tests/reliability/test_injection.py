"""SQL injection through names, and code execution through configs and data
files.

funlib.persistence builds SQL by string formatting, so every name that
reaches SQL (database, table, attribute, score and weight names) must be a
plain identifier, whether it comes from Python or from a config file. Config
files are data: YAML python tags are refused, look-up tables are loaded
without unpickling, attribute types are parsed, never evaluated. The one
exception is a `LambdaTask` function saved as a pickle, which its
documentation says."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from volara import prefork
from volara.blockwise import AffAgglom, GraphMWS, get_task
from volara.blockwise.registry import load_pipeline, read_config_file
from volara.datasets import Affs, Labels
from volara.dbs import SQLite
from volara.graph_tables import read_node_columns
from volara.lut import LUT

SRC = Path(__file__).parents[2] / "src" / "volara"
MALICIOUS = ["x; DROP TABLE nodes", "nodes--", "a b", "id) VALUES (1); --", "ünï"]


def _affs(tmp_path) -> Affs:
    return Affs(store=tmp_path / "affs.zarr", neighborhood=[[1, 0, 0], [0, 1, 0]])


@pytest.mark.parametrize("name", MALICIOUS)
def test_names_reaching_sql_are_refused_in_configs(tmp_path, name):
    sqlite = {"db_type": "sqlite", "path": str(tmp_path / "g.db")}
    configs = {
        "PostgreSQL.name": {"db_type": "postgresql", "name": name},
        "node_attrs": {**sqlite, "node_attrs": {name: "float"}},
        "edge_attrs": {**sqlite, "edge_attrs": {name: "float"}},
    }
    for field, db in configs.items():
        config = {
            "task_type": "graph-mws",
            "db": db,
            "lut": {"path": str(tmp_path / "lut")},
            "weights": {"score": [1.0, 0.0]},
            "roi": [[0, 0, 0], [10, 10, 10]],
        }
        with pytest.raises(ValidationError, match="not a valid identifier"):
            load_pipeline(config)
        assert not (tmp_path / "g.db").exists(), field
    with pytest.raises(ValidationError, match="not a valid identifier"):
        GraphMWS(
            db=SQLite(path=tmp_path / "g.db"),
            lut=LUT(path=tmp_path / "lut"),
            weights={name: (1.0, 0.0)},
            roi=[[0, 0, 0], [10, 10, 10]],
        )
    with pytest.raises(ValidationError, match="not a valid identifier"):
        AffAgglom(
            db=SQLite(path=tmp_path / "g.db"),
            affs_data=_affs(tmp_path),
            frags_data=Labels(store=tmp_path / "frags.zarr"),
            block_size=[4, 4, 4],
            context=[1, 1, 1],
            scores={name: [[1, 0, 0]]},
        )


def test_table_names_are_not_configurable(tmp_path):
    for field in ("nodes_table", "edges_table", "endpoint_names"):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            SQLite.model_validate({"path": str(tmp_path / "g.db"), field: "x"})


def test_reads_refuse_a_table_name_carrying_sql(tmp_path):
    # a graph opened elsewhere (e.g. by funlib directly) with a hostile name
    db = SQLite(path=tmp_path / "g.db")
    db.init()
    graph_db = db.open("r")
    graph_db.nodes_table_name = "nodes; DROP TABLE edges"
    with pytest.raises(ValueError, match="not a valid identifier"):
        read_node_columns(graph_db, ["position"])
    graph_db.nodes_table_name = "nodes"
    graph_db.cur.execute("SELECT COUNT(*) FROM edges")  # still there
    graph_db.close()


class _PlantsAFile:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_yaml_configs_cannot_run_code(tmp_path):
    proof = tmp_path / "code-ran"
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "task_type: threshold\n"
        f"threshold: !!python/object/apply:pathlib.Path.touch [{str(proof)!r}]\n"
    )
    with pytest.raises(ValueError, match=r"pipeline\.yaml: not a valid config file"):
        read_config_file(config)
    assert not proof.exists()
    # and the same object written with the unsafe dumper
    config.write_text(yaml.dump({"task_type": _PlantsAFile(proof)}))
    with pytest.raises(ValueError, match="not a valid config file"):
        read_config_file(config)
    assert not proof.exists()


def test_lut_files_are_never_unpickled(tmp_path):
    proof = tmp_path / "code-ran"
    hostile = np.empty(1, dtype=object)
    hostile[0] = _PlantsAFile(proof)
    np.savez(tmp_path / "lut.npz", fragment_segment_lut=hostile)
    with pytest.raises(ValueError, match="LUT.path: .* is not a readable look-up"):
        LUT(path=tmp_path / "lut").load()
    assert not proof.exists()


@pytest.mark.parametrize("spec", ["Path('x').touch()", "float; DROP TABLE nodes"])
def test_attribute_types_from_configs_are_not_evaluated(tmp_path, spec):
    config = tmp_path / "db.json"
    config.write_text(
        json.dumps({"db_type": "sqlite", "path": "g.db", "edge_attrs": {"s": spec}})
    )
    with pytest.raises(ValidationError, match="unknown type"):
        SQLite.model_validate(read_config_file(config))


UNSAFE_CALLS = re.compile(
    # eval/exec as builtins, not methods (torch's Module.eval())
    r"(?<![.\w])eval\(|(?<![.\w])exec\(|pickle\.loads?\(|yaml\.(unsafe_)?load\(|"
    r"allow_pickle\s*=\s*True|weights_only\s*=\s*False|marshal\.loads?\(|"
    r"\bshelve\b|__import__\("
)
ALLOWED = {
    # LambdaTask: a function given as a pickle in a config (documented)
    ("utils.py", "pickle.loads("),
    # the prefork host: worker functions from this user's own daisy workers,
    # over a socket in a directory only the user can open (checked below)
    ("prefork.py", "pickle.loads("),
    # Predict: a network saved whole with torch.save is a pickle (documented
    # on TorchModel.save_path: only from people you trust)
    ("models.py", "weights_only=False"),
}


def test_no_code_is_evaluated_or_unpickled_outside_lambda_functions():
    found = {
        (path.name, match.group(0))
        for path in SRC.rglob("*.py")
        for match in UNSAFE_CALLS.finditer(path.read_text())
    }
    assert found <= ALLOWED, found - ALLOWED


def test_only_the_user_can_reach_the_prefork_host():
    address = Path(prefork.host_address())
    assert address.exists()
    assert stat.S_IMODE(address.parent.stat().st_mode) == 0o700
    assert address.parent.stat().st_uid == os.getuid()


def test_lambda_task_says_that_pickled_functions_run_code():
    lambda_task = get_task("lambda")
    doc = lambda_task.model_fields["lambda_func"].description or ""
    assert re.search(r"pickle", doc) and re.search(r"trust", doc), doc
