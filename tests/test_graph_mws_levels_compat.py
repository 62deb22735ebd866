"""volara 1.0.5's blockwise graph tasks on volara 2: the meaning of
upstream's ``examples/multires-agglom`` (two `IterativeGraphMWS` rounds
chained with ``+``, tables composed with ``(lut1 + lut2).load_iterated()``)
on a smaller lattice, configs as 1.0.5 wrote them (``task_type:
graph-mws`` with ``fragments_db``; `FragSegEdgeAgglom` without a ``lut``)
loaded, run in Python and by ``volara-cli``, and
`GraphMWSExtractFragments` + `FragSegEdgeAgglom` giving what
`IterativeGraphMWS` gives."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from graph_levels_data import lattice_graph, read_graph, write_graph
from test_cli import run_cli
from volara.blockwise import load_task
from volara.blockwise.graph_mws import (
    FragSegEdgeAgglom,
    GraphMWSExtractFragments,
    IterativeGraphMWS,
)
from volara.dbs import SQLite
from volara.graph_tables import write_edge_rows
from volara.lut import LUT

SIDE = 16
"""Fragments per axis of the lattice, one per world unit."""
ROUND_1 = SIDE // 4
"""round_1's block side: each block holds 4 planes of 4 x 4 fragments."""
SUMMARIES = ["aff", "aff__size", "aff__min", "aff__max"]


def write_plane_lattice(path: Path) -> SQLite:
    """A ``SIDE``^3 lattice of fragments of size 1 at the voxel centres,
    ids in raster order from 0, edges to the z neighbour repulsive (aff -1)
    and to the y and x neighbours attractive (aff +1): the right answer is
    one segment per z plane."""
    db = SQLite(path=path, node_attrs={}, edge_attrs={"aff": "float"})
    db.drop()
    db.init()
    graph_db = db.open("r+")
    u, v, aff = [], [], []
    for z, y, x in itertools.product(range(SIDE), repeat=3):
        node = (z * SIDE + y) * SIDE + x
        for axis, value, step in ((z, -1.0, SIDE * SIDE), (y, 1.0, SIDE), (x, 1.0, 1)):
            if axis > 0:
                u.append(node - step)
                v.append(node)
                aff.append(value)
    try:
        graph_db.write_nodes(
            {
                (z * SIDE + y) * SIDE + x: {
                    "position": (z + 0.5, y + 0.5, x + 0.5),
                    "size": 1,
                    "filtered": False,
                }
                for z, y, x in itertools.product(range(SIDE), repeat=3)
            }
        )
        write_edge_rows(
            graph_db,
            np.array(u, dtype=np.uint64),
            np.array(v, dtype=np.uint64),
            {"aff": np.array(aff)},
        )
    finally:
        graph_db.close()
    return db


def volara1_config(
    task_type, fragments, segments, block_side, side=SIDE, workers=1, **fields
) -> dict:
    """A task config in the form volara 1.0.5's ``model_dump(mode="json")``
    wrote (its field names and defaults; DBs naming ``aff`` only), over a
    cube of ``side`` world units."""
    config = {
        "roi": [[0, 0, 0], [side, side, side]],
        "num_workers": workers,
        "num_cache_workers": None,
        "worker_config": None,
        "read_write_conflict": False,
        "task_type": task_type,
        "fragments_db": {
            "node_attrs": {},
            "edge_attrs": {"aff": "float"},
            "ndim": 3,
            "db_type": "sqlite",
            "path": str(fragments),
        },
        "segments_db": {
            "node_attrs": {},
            "edge_attrs": {"aff": "float"},
            "ndim": 3,
            "db_type": "sqlite",
            "path": str(segments),
        },
        "block_size": [block_side] * 3,
    }
    return {**config, **fields}


def graph_mws_config(
    fragments, segments, lut, block_side, fit, weights=(1.0, 0.0), **options
) -> dict:
    """1.0.5's IterativeGraphMWS (``fit: overhang``) or
    GraphMWSExtractFragments (``fit: shrink``): both ``task_type:
    graph-mws``."""
    return volara1_config(
        "graph-mws",
        fragments,
        segments,
        block_side,
        fit=fit,
        lut={"path": str(lut), "s3_kwargs": None},
        weights={"aff": list(weights)},
        edge_per_attr=True,
        **options,
    )


def check_one_segment_per_plane_patch(table: np.ndarray) -> None:
    """round_1's table: every fragment once, each segment the 4 x 4 patch of
    one z plane inside one block."""
    assert table.shape == (2, SIDE**3)
    assert np.unique(table[0]).size == SIDE**3
    z, y, x = np.unravel_index(table[0].astype(np.int64), (SIDE,) * 3)
    patch = (z * SIDE + y // ROUND_1) * SIDE + x // ROUND_1
    assert np.unique(table[1]).size == SIDE**3 // ROUND_1**2 == 256
    # same segment exactly when same patch
    pairs = np.unique(np.stack([patch, table[1]]), axis=1)
    assert pairs.shape[1] == 256


@pytest.mark.parametrize("workers", [0, 2], ids=["serial", "2-workers"])
def test_upstream_multires_example_two_rounds(tmp_path, workers):
    fragments = write_plane_lattice(tmp_path / "fragments.sqlite")
    super_fragments = SQLite(
        path=tmp_path / "super_fragments.sqlite", edge_attrs={"aff": "float"}
    )
    segments = SQLite(path=tmp_path / "segments.sqlite", edge_attrs={"aff": "float"})
    lut1, lut2 = LUT(path=tmp_path / "lut1"), LUT(path=tmp_path / "lut2")
    common = dict(
        weights={"aff": (1.0, 0.0)},
        roi=((0, 0, 0), (SIDE, SIDE, SIDE)),
        num_workers=max(workers, 1),
    )
    round_1 = IterativeGraphMWS(
        fragments_db=fragments,
        segments_db=super_fragments,
        lut=lut1,
        block_size=(ROUND_1,) * 3,
        **common,
    )
    round_2 = IterativeGraphMWS(
        fragments_db=super_fragments,
        segments_db=segments,
        lut=lut2,
        block_size=(SIDE,) * 3,
        **common,
    )
    pipeline = round_1 + round_2
    pipeline.drop()
    states = pipeline.run_blockwise(multiprocessing=workers > 0, progress=False)
    assert all(s.completed_count == s.total_block_count for s in states.values())

    mapping1 = lut1.load()
    check_one_segment_per_plane_patch(mapping1)
    mapping2 = lut2.load()
    # round_2 maps round_1's 256 segments onto the 16 planes
    assert mapping2.shape == (2, 256)
    assert np.unique(mapping2[0]).size == 256
    assert np.unique(mapping2[1]).size == SIDE
    mapping = (lut1 + lut2).load_iterated()
    assert mapping.shape == (2, SIDE**3)
    z = mapping[0].astype(np.int64) // (SIDE * SIDE)
    assert np.unique(np.stack([z, mapping[1]]), axis=1).shape[1] == SIDE
    # each plane's segment is named by its smallest fragment: its (y, x) = 0
    np.testing.assert_array_equal(mapping[1], z * SIDE * SIDE)
    # round_1's segment graph: 4 x 4 fragments each; an edge per touching
    # pair of patches: in a plane (3 x 4 pairs per axis, 16 planes) joining
    # the 4 fragment edges across their side, and between planes (15 x 16)
    # joining the 16 edges across their face
    nodes, edges = read_graph(super_fragments, SUMMARIES)
    assert nodes["size"].tolist() == [16] * 256
    in_plane = edges["aff"] == 1.0
    assert in_plane.sum() == 2 * 3 * 4 * 16
    assert (edges["aff"][~in_plane] == -1.0).sum() == 15 * 16
    assert set(edges["aff__size"][in_plane].tolist()) == {4.0}
    assert set(edges["aff__size"][~in_plane].tolist()) == {16.0}


def test_volara1_graph_mws_configs_load_as_their_tasks(tmp_path):
    lut = tmp_path / "lut"
    iterative = load_task(graph_mws_config("f.sqlite", "s.sqlite", lut, 4, "overhang"))
    assert isinstance(iterative, IterativeGraphMWS)
    extract = load_task(graph_mws_config("f.sqlite", "s.sqlite", lut, 4, "shrink"))
    assert isinstance(extract, GraphMWSExtractFragments)
    # 1.0.5's defaults: the iterative task looks one block around each
    # block, the extracting one not at all
    assert tuple(iterative.stages().tasks[0].context_size) == (4, 4, 4)
    assert tuple(extract.stages().tasks[0].context_size) == (0, 0, 0)
    edges = load_task(
        volara1_config(
            "frag-seg-edge-agglom",
            "f.sqlite",
            "s.sqlite",
            4,
            fit="shrink",
            edge_attrs=["aff"],
        )
    )
    assert isinstance(edges, FragSegEdgeAgglom) and edges.lut is None


@pytest.mark.parametrize("workers", [0, 2], ids=["serial", "2-workers"])
def test_extract_fragments_then_edge_agglom_equal_iterative(tmp_path, workers):
    """On a noisy graph with counts: 1.0.5's two-task pipeline (the edge
    task without a lut, as its configs have none) writes the same segment
    nodes, segment edges and table as `IterativeGraphMWS` with the same
    (zero) context."""
    graph = lattice_graph(side=12, noise=0.25, seed=3, objects=60, with_counts=True)
    fragments = write_graph(graph, SQLite(path=tmp_path / "f.sqlite"))
    block = 12 * 4 // 2
    # a 2 x 2 x 2 grid of blocks over the lattice, an affinity above 0.5
    # merges
    options = dict(side=48, workers=max(workers, 1))
    merging = dict(weights=(1.0, -0.5), **options)
    extract = load_task(
        graph_mws_config(
            fragments.path, "two.sqlite", "two", block, "shrink", **merging
        )
    )
    edges = load_task(
        volara1_config(
            "frag-seg-edge-agglom",
            fragments.path,
            "two.sqlite",
            block,
            fit="shrink",
            edge_attrs=["aff"],
            **options,
        )
    )
    iterative = load_task(
        graph_mws_config(
            fragments.path, "one.sqlite", "one", block, "overhang", **merging
        )
        | {"context": [0, 0, 0]}
    )
    for pipeline in (extract + edges, iterative):
        states = pipeline.run_blockwise(multiprocessing=workers > 0, progress=False)
        assert all(s.completed_count == s.total_block_count for s in states.values())
    np.testing.assert_array_equal(LUT(path="two").load(), LUT(path="one").load())
    two_nodes, two_edges = read_graph(SQLite(path=Path("two.sqlite")), SUMMARIES)
    one_nodes, one_edges = read_graph(SQLite(path=Path("one.sqlite")), SUMMARIES)
    for name in one_nodes:
        np.testing.assert_array_equal(two_nodes[name], one_nodes[name], name)
    for name in one_edges:
        np.testing.assert_array_equal(two_edges[name], one_edges[name], name)
    assert one_edges["u"].size > 100
    # the counts are the fragment graph's: every fragment edge between two
    # segments is counted once
    table = LUT(path="one").load()
    segment = dict(zip(table[0].tolist(), table[1].tolist(), strict=True))
    across = np.array(
        [
            segment[a] != segment[b]
            for a, b in zip(graph.u.tolist(), graph.v.tolist(), strict=True)
        ]
    )
    assert graph.counts is not None
    assert one_edges["aff__size"].sum() == graph.counts[across].sum()


def test_volara_cli_runs_a_volara1_config(tmp_path):
    write_plane_lattice(tmp_path / "fragments.sqlite")
    config = graph_mws_config(
        "fragments.sqlite", "super.sqlite", "lut1", ROUND_1, "overhang", workers=2
    )
    (tmp_path / "round_1.json").write_text(json.dumps(config))
    result = run_cli(["run", "round_1.json", "--log-dir", "logs"], tmp_path)
    assert result.returncode == 0, result.stderr
    check_one_segment_per_plane_patch(LUT(path=tmp_path / "lut1").load())
    nodes, edges = read_graph(SQLite(path=tmp_path / "super.sqlite"), SUMMARIES)
    assert nodes["id"].size == 256 and edges["u"].size > 0
