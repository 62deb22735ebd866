"""Wrong configs and inputs give a clear error, naming the field, before any
block runs: nothing is written (no output array, graph or table; no block
marked done).

Every case below is a row of the table in docs/bad-input.md; a test checks
that the table and the cases agree (``VOLARA_UPDATE_DOCS=1`` rewrites it).
Each case builds its inputs in a fresh directory and returns the action
that must fail: building the task (from Python or a config file) and
running it."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import write_array
from volara.blockwise import (
    AffAgglom,
    ExtractFrags,
    GraphMWS,
    Relabel,
    Threshold,
    load_pipeline,
)
from volara.blockwise.registry import read_config_file
from volara.datasets import Affs, Labels, Raw
from volara.dbs import PostgreSQL, SQLite
from volara.lut import LUT
from volara.sample_data import generate_sample_data

DOC = Path(__file__).parents[2] / "docs" / "bad-input.md"
EDGES = {"adj_weight": "float", "lr_weight": "float"}
SHORT = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


@dataclass
class Case:
    id: str
    input: str
    """What is wrong, as the doc's table says it."""
    error: str
    """Parts of the error message (whitespace collapsed), in order, with
    " … " where the message says more (e.g. a path)."""
    raises: type[Exception]
    make: Callable[[Path], Callable[[], Any]]
    """Prepares the inputs in a directory; returns the action that fails."""
    needs_non_root: bool = False


CASES: list[Case] = []


def case(id: str, input: str, error: str, raises: type[Exception] = ValueError, **kw):
    def register(make: Callable[[Path], Callable[[], Any]]):
        CASES.append(Case(id, input, error, raises, make, **kw))
        return make

    return register


# ------------------------------------------------------------------ builders


def sample(root: Path) -> None:
    """10 x 32 x 32 voxels (40, 4, 4 nm), 9 affinity offsets."""
    generate_sample_data(root / "sample.zarr", shape=(10, 32, 32), num_cells=5, seed=2)


def affs(root: Path, **changes) -> Affs:
    return Affs(store=root / "sample.zarr" / "affinities", **changes)


def extract_frags(root: Path, **changes) -> ExtractFrags:
    options: dict[str, Any] = dict(
        db=SQLite(path=root / "graph.db", edge_attrs=EDGES),
        affs_data=affs(root),
        frags_data=Labels(store=root / "out.zarr" / "fragments"),
        block_size=[5, 16, 16],
        context=[2, 8, 8],
        bias=[-0.4] * 9,
    )
    options.update(changes)
    return ExtractFrags(**options)


def aff_agglom(root: Path, **changes) -> AffAgglom:
    options: dict[str, Any] = dict(
        db=SQLite(path=root / "graph.db", edge_attrs=EDGES),
        affs_data=affs(root),
        frags_data=Labels(store=root / "sample.zarr" / "labels"),
        block_size=[5, 16, 16],
        context=[2, 8, 8],
        scores={"adj_weight": SHORT},
    )
    options.update(changes)
    return AffAgglom(**options)


def relabel_inputs(root: Path) -> None:
    sample(root)
    LUT(path=root / "lut").save(np.array([[1, 2], [7, 7]]))


def relabel(root: Path, **changes) -> Relabel:
    options: dict[str, Any] = dict(
        frags_data=Labels(store=root / "sample.zarr" / "labels"),
        seg_data=Labels(store=root / "out.zarr" / "segments"),
        lut=LUT(path=root / "lut"),
        block_size=[5, 16, 16],
    )
    options.update(changes)
    return Relabel(**options)


def run(build: Callable[[], Any]) -> Callable[[], Any]:
    return lambda: build().run_blockwise(multiprocessing=False)


def run_config(path: Path) -> Callable[[], Any]:
    return lambda: load_pipeline(read_config_file(path)).run_blockwise(
        multiprocessing=False
    )


# ------------------------------------------------------- types and ranges


@case(
    "block-size-not-integers",
    "`block_size: [5.5, 16, 16]`",
    "block_size Value error, expected a list of integers",
)
def _(root):
    sample(root)
    return run(lambda: extract_frags(root, block_size=[5.5, 16, 16]))


@case(
    "block-size-wrong-length",
    "`block_size: [5, 16]` for 3D data",
    "ExtractFrags.block_size (5, 16) has 2 values",
)
def _(root):
    sample(root)
    return run(lambda: extract_frags(root, block_size=[5, 16]))


@case(
    "negative-context",
    "`context: [-2, 8, 8]`",
    "ExtractFrags.context must not be negative",
)
def _(root):
    sample(root)
    return run(lambda: extract_frags(root, context=[-2, 8, 8]))


@case(
    "zero-workers",
    "`num_workers: 0`",
    "num_workers Input should be greater than or equal to 1",
)
def _(root):
    sample(root)
    return run(lambda: extract_frags(root, num_workers=0))


@case(
    "negative-retries",
    "`max_retries: -1`",
    "max_retries Input should be greater than or equal to 0",
)
def _(root):
    relabel_inputs(root)
    return run(lambda: relabel(root, max_retries=-1))


@case("zero-timeout", "`timeout: 0`", "timeout Input should be greater than 0")
def _(root):
    relabel_inputs(root)
    return run(lambda: relabel(root, timeout=0))


@case("unknown-fit", '`fit: "bogus"`', "fit Input should be 'shrink'")
def _(root):
    sample(root)
    return run(
        lambda: Threshold(
            in_data=Raw(store=root / "sample.zarr" / "labels"),
            mask=Labels(store=root / "out.zarr" / "mask"),
            threshold=0.5,
            block_size=[5, 16, 16],
            fit="bogus",
        )
    )


@case(
    "misspelt-field",
    "`block_sise: [5, 16, 16]` (a typo)",
    "block_sise Extra inputs are not permitted",
)
def _(root):
    relabel_inputs(root)
    return run(lambda: relabel(root, block_sise=[5, 16, 16]))


@case(
    "filter-fragments-above-1",
    "`filter_fragments: 1.5`",
    "filter_fragments Input should be less than or equal to 1",
)
def _(root):
    sample(root)
    return run(lambda: extract_frags(root, filter_fragments=1.5))


@case(
    "bias-length",
    "3 `bias` values for 9 affinity offsets",
    "ExtractFrags.bias has 3 values but the neighborhood of affs_data has 9 offsets",
)
def _(root):
    sample(root)
    return run(lambda: extract_frags(root, bias=[-0.4] * 3))


@case(
    "strides-length",
    "2 `strides` for 9 affinity offsets",
    "ExtractFrags.strides has 2 entries but the neighborhood of affs_data has 9",
)
def _(root):
    sample(root)
    return run(lambda: extract_frags(root, strides=[[1, 1, 1]] * 2))


@case(
    "zero-stride",
    "a stride `[0, 1, 1]`",
    "ExtractFrags.strides: (0, 1, 1) must have 3 values >= 1",
)
def _(root):
    sample(root)
    return run(lambda: extract_frags(root, strides=[[0, 1, 1]] + [[1, 1, 1]] * 8))


@case(
    "sigma-dimensions",
    "`sigma: [1, 1]` for 3D data",
    "ExtractFrags.sigma (1, 1): give 3 non-negative values",
)
def _(root):
    sample(root)
    return run(lambda: extract_frags(root, sigma=[1, 1]))


@case(
    "db-ndim",
    "a graph with `ndim: 2` for 3D affinities",
    "ExtractFrags.db: ndim is 2, the affinities have 3 spatial axes",
)
def _(root):
    sample(root)
    return run(lambda: extract_frags(root, db=SQLite(path=root / "graph.db", ndim=2)))


@case(
    "unknown-attribute-type",
    '`edge_attrs: {"adj_weight": "double"}`',
    "attribute 'adj_weight': unknown type 'double'",
)
def _(root):
    sample(root)
    return run(
        lambda: extract_frags(
            root, db=SQLite(path=root / "graph.db", edge_attrs={"adj_weight": "double"})
        )
    )


@case(
    "sql-in-a-name",
    '`PostgreSQL.name: "x; DROP TABLE nodes"`',
    "PostgreSQL.name 'x; DROP TABLE nodes' is not a valid identifier",
)
def _(root):
    sample(root)
    return run(lambda: extract_frags(root, db=PostgreSQL(name="x; DROP TABLE nodes")))


@case(
    "roi-dimensions",
    "a 2D `roi` for 3D data",
    "Relabel.roi has 2 dimensions; the data has 3",
)
def _(root):
    relabel_inputs(root)
    return run(lambda: relabel(root, roi=[[0, 0], [40, 40]]))


@case(
    "roi-outside-the-data",
    "a `roi` that misses the data",
    "Relabel: nothing to process: the write region",
)
def _(root):
    relabel_inputs(root)
    return run(lambda: relabel(root, roi=[[1000, 0, 0], [400, 128, 128]]))


# ------------------------------------------------------------ config files


@case(
    "unknown-task-type",
    '`task_type: "extract-fragments"`',
    "unknown task_type 'extract-fragments'; known task types:",
)
def _(root):
    (root / "config.json").write_text(json.dumps({"task_type": "extract-fragments"}))
    return run_config(root / "config.json")


@case(
    "missing-task-type",
    "a task config without `task_type`",
    "a task config is a mapping with a 'task_type' key",
)
def _(root):
    (root / "config.json").write_text(json.dumps({"tasks": [{"threshold": 0.5}]}))
    return run_config(root / "config.json")


@case(
    "config-not-a-mapping",
    "a YAML file holding a list",
    "a config file holds a mapping, got list",
)
def _(root):
    (root / "config.yaml").write_text("- task_type: threshold\n")
    return run_config(root / "config.yaml")


@case(
    "python-tag-in-yaml",
    "YAML with `!!python/object/apply:os.system`",
    "config.yaml: not a valid config file: could not determine a constructor",
)
def _(root):
    (root / "config.yaml").write_text(
        "task_type: !!python/object/apply:os.system ['touch hacked']\n"
    )
    return run_config(root / "config.yaml")


@case(
    "pipeline-edge-out-of-range",
    "`edges: [[0, 5]]` with one task",
    "pipeline edge [0, 5]: expected [i, j] with task indices below 1",
)
def _(root):
    relabel_inputs(root)
    task = relabel(root).model_dump(mode="json")
    (root / "config.json").write_text(json.dumps({"tasks": [task], "edges": [[0, 5]]}))
    return run_config(root / "config.json")


# ---------------------------------------------------------------- datasets


@case(
    "missing-input",
    "`frags_data` names no zarr array",
    "Relabel.frags_data: Labels.store: no zarr array at … nothing.zarr",
    FileNotFoundError,
)
def _(root):
    relabel_inputs(root)
    return run(lambda: relabel(root, frags_data=Labels(store=root / "nothing.zarr")))


@case(
    "input-is-a-file",
    "`store` is a regular file, not a zarr array",
    "Relabel.frags_data: Labels.store: no zarr array at … afile",
    FileNotFoundError,
)
def _(root):
    relabel_inputs(root)
    (root / "afile").write_text("not an array")
    return run(lambda: relabel(root, frags_data=Labels(store=root / "afile")))


@case(
    "missing-affinities",
    "`affs_data` (neighborhood given) names no zarr array",
    "ExtractFrags.affs_data: Affs.store: no zarr array at … nothing.zarr",
    FileNotFoundError,
)
def _(root):
    sample(root)
    missing = Affs(store=root / "nothing.zarr", neighborhood=[[1, 0, 0]] * 9)
    return run(lambda: extract_frags(root, affs_data=missing))


@case(
    "affinities-without-neighborhood",
    "affinities without a `neighborhood` attribute, none given",
    "Affs.neighborhood: not given, and … has no 'neighborhood' attribute",
)
def _(root):
    write_array(root / "a.zarr" / "affs", np.ones((3, 4, 8, 8), np.float32))
    return run(lambda: Affs(store=root / "a.zarr" / "affs"))


@case(
    "neighborhood-disagrees",
    "`neighborhood` given differs from the stored one",
    "Affs.neighborhood: given [(1, 0, 0)] but … stores [(1, 0, 0), (0, 1, 0)",
)
def _(root):
    sample(root)
    return run(
        lambda: extract_frags(root, affs_data=affs(root, neighborhood=[[1, 0, 0]]))
    )


@case(
    "affinity-channels",
    "3 affinity channels for a neighborhood of 9 offsets",
    "ExtractFrags.affs_data: … has shape (3, 4, 32, 32) (1 channel axes) but its "
    "neighborhood has 9 offsets",
)
def _(root):
    sample(root)
    write_array(
        root / "a.zarr" / "affs", np.ones((3, 4, 32, 32), np.float32), (40, 4, 4)
    )
    nine = Affs(store=root / "a.zarr" / "affs", neighborhood=[[1, 0, 0]] * 9)
    return run(lambda: extract_frags(root, affs_data=nine))


@case(
    "nan-affinities",
    "affinities with a NaN",
    "ExtractFrags.affs_data: … has 1 NaN affinities; fix or mask them",
)
def _(root):
    sample(root)
    array = affs(root).array("r+")
    data = array[array.roi]
    data[0, 0, 0, 0] = np.nan
    array[array.roi] = data
    return run(lambda: extract_frags(root))


@case(
    "voxel-size-mismatch",
    "`affs_data` at (40, 4, 4) nm, `frags_data` at (40, 8, 8) nm",
    "AffAgglom.affs_data: voxel size (40, 4, 4)",
)
def _(root):
    sample(root)
    write_array(root / "f.zarr" / "frags", np.ones((10, 16, 16), np.uint64), (40, 8, 8))
    frags = Labels(store=root / "f.zarr" / "frags")
    return run(lambda: aff_agglom(root, frags_data=frags))


@case(
    "mask-does-not-cover",
    "`mask_data` smaller than the affinities",
    "ExtractFrags.mask_data: … covers … which does not contain the region to process",
)
def _(root):
    sample(root)
    write_array(root / "m.zarr" / "mask", np.ones((10, 16, 16), np.uint8), (40, 4, 4))
    mask = Raw(store=root / "m.zarr" / "mask")
    return run(lambda: extract_frags(root, mask_data=mask))


@case(
    "existing-output-differs",
    "the output exists with another shape",
    "Labels.store: the existing array at … does not match what this task would "
    "write: shape (voxels): given (10, 32, 32), found (4, 4, 4)",
)
def _(root):
    relabel_inputs(root)
    write_array(root / "out.zarr" / "segments", np.zeros((4, 4, 4), np.uint64))
    return run(lambda: relabel(root))


@case(
    "unwritable-output",
    "the output's folder is a regular file",
    "Labels.store: cannot create … afile/seg",
    OSError,
)
def _(root):
    relabel_inputs(root)
    (root / "afile").write_text("not a folder")
    return run(lambda: relabel(root, seg_data=Labels(store=root / "afile" / "seg")))


@case(
    "unreadable-input",
    "an input without read permission",
    "Relabel.frags_data: cannot read … labels",
    OSError,
    needs_non_root=True,
)
def _(root):
    relabel_inputs(root)
    (root / "sample.zarr" / "labels").chmod(0)
    return run(lambda: relabel(root))


# ---------------------------------------------------------- graphs, tables


@case(
    "unwritable-graph",
    "`SQLite.path` inside a regular file",
    "ExtractFrags.db: SQLite.path: cannot create",
    PermissionError,
)
def _(root):
    sample(root)
    (root / "afile").write_text("not a folder")
    db = SQLite(path=root / "afile" / "graph.db", edge_attrs=EDGES)
    return run(lambda: extract_frags(root, db=db))


@case(
    "graph-file-not-sqlite",
    "`SQLite.path` is a file but not an SQLite database",
    "ExtractFrags.db: SQLite.path: … exists but is not an SQLite database",
)
def _(root):
    sample(root)
    (root / "graph.db").write_text("plain text, not a database " * 100)
    return run(lambda: extract_frags(root))


@case(
    "graph-metadata-corrupted",
    "the graph's metadata file (`<name>-meta.json`) is damaged",
    "ExtractFrags.db: SQLite.path: … is not a volara graph database",
)
def _(root):
    sample(root)
    db = SQLite(path=root / "graph.db", edge_attrs=EDGES)
    db.init()
    db.meta_path.write_text('{"node_attrs": ')
    return run(lambda: extract_frags(root, db=db))


@case(
    "graph-unreachable",
    "PostgreSQL server unreachable",
    "ExtractFrags.db: PostgreSQL: cannot connect to postgresql://127.0.0.1:1/",
    ConnectionError,
)
def _(root):
    sample(root)
    db = PostgreSQL(host="127.0.0.1", port=1, name="volara_nowhere", edge_attrs=EDGES)
    return run(lambda: extract_frags(root, db=db))


@case(
    "graph-missing-attributes",
    "the graph exists without the `lr_weight` edge attribute",
    "ExtractFrags.db: SQLite: the database at … was created with other attributes "
    "than this config names: edge attribute 'lr_weight' is missing",
)
def _(root):
    sample(root)
    SQLite(path=root / "graph.db", edge_attrs={"adj_weight": "float"}).init()
    return run(lambda: extract_frags(root))


@case(
    "score-not-in-graph",
    "`scores` names an attribute the graph lacks",
    "AffAgglom.scores: 'z_aff' is not an edge attribute of the database",
)
def _(root):
    sample(root)
    return run(lambda: aff_agglom(root, scores={"z_aff": [[1, 0, 0]]}))


@case(
    "score-offset-not-in-neighborhood",
    "a `scores` offset the affinities lack",
    "AffAgglom.scores['adj_weight']: offset (3, 0, 0) is not in the neighborhood",
)
def _(root):
    sample(root)
    return run(lambda: aff_agglom(root, scores={"adj_weight": [[3, 0, 0]]}))


@case(
    "weights-not-in-graph",
    "GraphMWS `weights` names an attribute the graph lacks",
    "GraphMWS.weights: 'z_aff' is not an edge attribute of the database",
)
def _(root):
    return run(
        lambda: GraphMWS(
            db=SQLite(path=root / "graph.db", edge_attrs=EDGES),
            lut=LUT(path=root / "lut"),
            weights={"z_aff": (1.0, -0.5)},
            roi=[[0, 0, 0], [400, 128, 128]],
        )
    )


@case("missing-lut", "`lut` names no file", "LUT.path: no look-up table at", OSError)
def _(root):
    relabel_inputs(root)
    task = relabel(root)
    task.lut.drop()
    return run(lambda: task)


@case(
    "corrupted-lut",
    "`lut` is not an .npz file",
    "LUT.path: … lut.npz is not a readable look-up table",
)
def _(root):
    relabel_inputs(root)
    task = relabel(root)
    task.lut.file.write_bytes(b"PK\x03\x04 truncated zip")
    return run(lambda: task)


@case(
    "lut-wrong-shape",
    "`lut` holds a (3, n) array",
    "LUT.path: … holds an array of shape (3, 2); a look-up table has shape (2, n)",
)
def _(root):
    relabel_inputs(root)
    task = relabel(root)
    np.savez(task.lut.file, fragment_segment_lut=np.ones((3, 2), np.uint64))
    return run(lambda: task)


# ------------------------------------------------------------ block tracking


@case(
    "tracking-from-another-roi",
    "a rerun with another `roi` than the finished blocks were made for",
    "task 'segments-relabel' has finished blocks recorded for another block "
    "layout: write_roi: was [[0, 0, 0], [400, 128, 128]], now [[0, 0, 0], "
    "[200, 64, 64]]",
)
def _(root):
    relabel_inputs(root)
    relabel(root).run_blockwise(multiprocessing=False)
    return run(lambda: relabel(root, roi=[[0, 0, 0], [200, 64, 64]]))


@case(
    "tracking-without-layout",
    "block tracking of another block size, its layout.json lost",
    "task 'segments-relabel': the block tracking at … does not fit this task's "
    "block layout",
)
def _(root):
    relabel_inputs(root)
    task = relabel(root)
    task.run_blockwise(multiprocessing=False)
    task.layout_file.unlink()
    return run(lambda: relabel(root, block_size=[10, 16, 16]))


# ------------------------------------------------------------------ checks


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file's size and modification time, except what volara may
    write before it refuses a run (its layout record and saved config) and
    SQLite's connection files."""
    files = {}
    for path in root.rglob("*"):
        if (
            path.is_dir()
            or path.name in ("layout.json", "config.json")
            or path.name.endswith(("-wal", "-shm"))
        ):
            continue
        stat = path.stat()
        files[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return files


def _message(error: BaseException) -> str:
    return " ".join(str(error).split())


def _says(message: str, excerpt: str) -> bool:
    """Whether ``message`` holds the parts of ``excerpt`` between " … " in
    this order."""
    position = 0
    for part in excerpt.split(" … "):
        position = message.find(part, position)
        if position < 0:
            return False
        position += len(part)
    return True


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_refused_before_any_block_runs(tmp_path, bad: Case):
    if bad.needs_non_root and os.geteuid() == 0:
        pytest.skip("root reads files without read permission")
    root = tmp_path / "case"
    root.mkdir()
    action = bad.make(root)
    before = _files(tmp_path)
    with pytest.raises(bad.raises) as refused:
        action()
    assert _says(_message(refused.value), bad.error), _message(refused.value)
    after = _files(tmp_path)
    assert after == before, (
        f"written although refused: {sorted(set(after.items()) - set(before.items()))}"
    )
    assert not (tmp_path / "hacked").exists()


def _table() -> str:
    rows = ["| case | input | error (excerpt) |", "| --- | --- | --- |"]
    for c in CASES:
        error = c.error.replace("|", r"\|")
        rows.append(f"| `{c.id}` | {c.input} | {error} |")
    return "\n".join(rows)


def test_doc_lists_every_case():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)
    text = DOC.read_text()
    match = re.search(r"<!-- cases -->\n(.*?)<!-- /cases -->", text, re.DOTALL)
    assert match, f"{DOC} lost its <!-- cases --> markers"
    table = _table() + "\n"
    if os.environ.get("VOLARA_UPDATE_DOCS"):
        DOC.write_text(text[: match.start(1)] + table + text[match.end(1) :])
    else:
        assert match.group(1) == table, (
            f"{DOC} is out of date: rerun this test with VOLARA_UPDATE_DOCS=1"
        )
