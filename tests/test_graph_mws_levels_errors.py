"""Bad configurations of blockwise GraphMWS refused before any block runs:
each error names the field and the fix, and nothing is written (no table,
no pieces, no segment database, no block tracking)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from graph_levels_data import WEIGHTS, lattice_graph, write_graph
from volara.blockwise import GraphMWS
from volara.blockwise.graph_mws import FragSegEdgeAgglom, IterativeGraphMWS
from volara.dbs import SQLite
from volara.lut import LUT

SIDE = 6 * 4
"""World units per axis of the graph (6^3 fragments)."""
ROI = ((0, 0, 0), (SIDE, SIDE, SIDE))


@pytest.fixture
def fragments(tmp_path) -> SQLite:
    return write_graph(
        lattice_graph(side=6, noise=0.2, seed=2), SQLite(path=tmp_path / "f.sqlite")
    )


def files(directory: Path) -> list[Path]:
    return sorted(p.relative_to(directory) for p in directory.rglob("*"))


def refused(task, directory: Path, *patterns: str) -> str:
    """Run ``task``: it must raise a ValueError whose message matches every
    regex of ``patterns``, and leave ``directory`` as it was."""
    before = files(directory)
    with pytest.raises(ValueError) as error:
        task.run_blockwise(multiprocessing=False, progress=False)
    message = str(error.value)
    for pattern in patterns:
        assert re.search(pattern, message), (pattern, message)
    assert files(directory) == before
    return message


def level(fragments, segments, lut, block, **fields) -> IterativeGraphMWS:
    return IterativeGraphMWS(
        fragments_db=fragments,
        segments_db=segments,
        lut=LUT(path=lut),
        weights=WEIGHTS,
        roi=fields.pop("roi", ROI),
        block_size=(block,) * 3,
        **fields,
    )


def two_rounds(fragments, tmp_path, block_1, block_2, **round_2):
    middle = SQLite(path=tmp_path / "middle.sqlite", edge_attrs={"aff": "float"})
    top = round_2.pop("segments_db", SQLite(path=tmp_path / "top.sqlite"))
    return level(fragments, middle, tmp_path / "lut1", block_1) + level(
        middle, top, tmp_path / "lut2", block_2, **round_2
    )


def test_a_later_level_whose_blocks_are_not_multiples_is_refused(fragments, tmp_path):
    refused(
        two_rounds(fragments, tmp_path, 8, 12),
        tmp_path,
        # named after the level's first stage (GraphMWSBlocks)
        r"\.block_size \(12, 12, 12\) is not a multiple",
        r"block size \(8, 8, 8\)",
        r"Use a multiple, e\.g\. \(16, 16, 16\)",
    )


def test_a_later_level_off_the_earlier_grid_is_refused(fragments, tmp_path):
    refused(
        two_rounds(fragments, tmp_path, 8, 16, roi=((4, 0, 0), (16, SIDE, SIDE))),
        tmp_path,
        r"\.roi starts at \(4, 0, 0\), off the block grid",
        r"start it on that grid",
    )


def test_segments_db_equal_to_fragments_db_is_refused(fragments, tmp_path):
    before = files(tmp_path)
    with pytest.raises(ValidationError) as error:
        level(fragments, fragments.model_copy(), tmp_path / "lut", 8)
    message = str(error.value)
    assert "IterativeGraphMWS.segments_db is the same database as fragments_db" in (
        message
    )
    assert "Give segments_db another path (SQLite) or name (PostgreSQL)" in message
    # a later round's mistake is refused as it is written, before the
    # pipeline (and its first round) exists
    middle = SQLite(path=tmp_path / "middle.sqlite", edge_attrs={"aff": "float"})
    with pytest.raises(ValidationError, match="segments_db is the same database"):
        two_rounds(fragments, tmp_path, 8, 16, segments_db=middle)
    assert files(tmp_path) == before


@pytest.mark.parametrize("blockwise", [True, False], ids=["GraphMWS", "Iterative"])
def test_a_weight_missing_from_the_fragment_graph_is_refused(
    fragments, tmp_path, blockwise
):
    weights = {"aff": (1.0, -0.5), "affinity": (1.0, -0.5)}
    if blockwise:
        task = GraphMWS(
            db=fragments,
            lut=LUT(path=tmp_path / "lut"),
            weights=weights,
            roi=ROI,
            block_size=(8, 8, 8),
        )
    else:
        task = level(fragments, SQLite(path=tmp_path / "s.sqlite"), "lut", 8)
        task = task.model_copy(update={"weights": weights})
    refused(
        task,
        tmp_path,
        r"weights: 'affinity' is not an edge attribute of fragments_db",
        r"Add it to the db's edge_attrs",
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("starting_lut", {"path": "start"}),
        ("out_db", {"db_type": "sqlite", "path": "out.sqlite"}),
    ],
)
def test_graph_mws_in_levels_refuses_in_memory_only_fields(tmp_path, field, value):
    with pytest.raises(ValidationError) as error:
        GraphMWS(
            db=SQLite(path=tmp_path / "f.sqlite", edge_attrs={"aff": "float"}),
            lut=LUT(path=tmp_path / "lut"),
            weights=WEIGHTS,
            roi=ROI,
            block_size=(8, 8, 8),
            **{field: value},
        )
    message = str(error.value)
    assert f"GraphMWS.{field} cannot be combined with block_size" in message
    assert f"drop {field}, or block_size to solve in memory" in message
    assert files(tmp_path) == []


def test_frag_seg_edge_agglom_without_lut_or_upstream_is_refused(fragments, tmp_path):
    task = FragSegEdgeAgglom(
        fragments_db=fragments,
        segments_db=SQLite(path=tmp_path / "s.sqlite"),
        edge_attrs=["aff"],
        roi=ROI,
        block_size=(8, 8, 8),
    )
    refused(
        task,
        tmp_path,
        r"FragSegEdgeAgglom\.lut is None and no task earlier in the pipeline "
        r"writes segments_db",
        r"Give the lut that GraphMWSExtractFragments wrote, or run after it",
    )
