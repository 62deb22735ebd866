"""volara 2 against figures recorded from volara 1.0.5 (no volara 1 needed).

Each JSON in ``tests/parity_reference/`` was written by ``python
benchmarks/parity.py --write-reference`` from volara 1.0.5's run of the
segmentation pipeline (ExtractFrags, AffAgglom, GraphMWS, Relabel) on data
from `generate_sample_data`. It holds the generation arguments, the task
parameters, and 1.0.5's fragment count, segment count and scores against the
ground truth. Here the data are generated again and volara 2 runs the same
pipeline (real zarr, SQLite and two daisy workers) with the same parameters.

Affinities without equal values (``affs_dtype="float64"``) must give the
very same result: the same fragment and segment counts and scores. The
fragment count is the tight check: 1.0.5 numbers every connected piece of a
block's mutex-watershed clusters as its own fragment and leaves voxels that
no attractive edge joins at 0; counting pieces or singletons another way
moves it. On clipped or 8-bit affinities, whose many equal values volara 2
takes in another order than 1.0.5 (by position in the volume, the same in
every block), the fragments differ by design and the segmentation must score
about as well against the truth (`SCORE_TOLERANCE`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate

from volara.blockwise import AffAgglom, ExtractFrags, GraphMWS, Relabel
from volara.datasets import Labels
from volara.dbs import SQLite
from volara.kernels.metrics import segmentation_scores
from volara.lut import LUT
from volara.sample_data import generate_sample_data

REFERENCE_DIR = Path(__file__).parent / "parity_reference"
REFERENCES = sorted(REFERENCE_DIR.glob("*.json"))

SCORE_TOLERANCE = 0.02
"""On affinities with equal values: how much worse than 1.0.5's VOI (split
+ merge) and adapted Rand error volara 2 may be against the ground truth.
Over twelve generated datasets of the kinds of these references (clipped
cells, 8-bit touching cells, clipped neurites; four seeds each) volara 2's
VOI averaged 0.056 against 1.0.5's 0.050 and its ARE 0.011 against 0.012;
single datasets differ both ways by up to 0.05, these references by less
than 0.02 (benchmarks/README.md, "Ties")."""

pytestmark = pytest.mark.slow


class ParityImprovement(UserWarning):
    """volara 2 scores better against the ground truth than volara 1.0.5."""


def run_pipeline(
    sample, task: dict[str, Any], out: Path
) -> tuple[np.ndarray, np.ndarray]:
    """The reference's segmentation pipeline with volara 2; returns the
    fragments and the segments."""
    affs = sample.affinities
    neighborhood = affs.neighborhood
    short = [o for o in neighborhood if max(abs(c) for c in o) == 1]
    long = [o for o in neighborhood if max(abs(c) for c in o) > 1]
    db = SQLite(
        path=out / "graph.sqlite",
        edge_attrs={"adj_weight": "float", "lr_weight": "float"},
    )
    fragments = Labels(store=out / "output.zarr" / "fragments")
    segments = Labels(store=out / "output.zarr" / "segments")
    lut = LUT(path=out / "lut.npz")
    block_size, context = Coordinate(task["block_size"]), Coordinate(task["context"])
    workers = task["num_workers"]
    options = {
        key: task[key]
        for key in ("strides", "sigma", "filter_fragments", "remove_debris")
        if task.get(key) is not None
    }
    short_bias, long_bias = task["merge_bias"]
    pipeline = (
        ExtractFrags(
            db=db,
            affs_data=affs,
            frags_data=fragments,
            block_size=block_size,
            context=context,
            bias=task["bias"],
            noise_eps=task["noise_eps"],
            num_workers=workers,
            **options,
        )
        + AffAgglom(
            db=db,
            affs_data=affs,
            frags_data=fragments,
            block_size=block_size,
            context=context,
            scores={"adj_weight": short, "lr_weight": long},
            num_workers=workers,
        )
        + GraphMWS(
            db=db,
            lut=lut,
            roi=affs.array("r").roi,
            weights={"adj_weight": (1.0, short_bias), "lr_weight": (1.0, long_bias)},
        )
        + Relabel(
            frags_data=fragments,
            seg_data=segments,
            lut=lut,
            block_size=block_size,
            num_workers=workers,
        )
    )
    states = pipeline.run_blockwise(progress=False, summary=False)
    for name, state in states.items():
        assert state.completed_count == state.total_block_count, (name, state)
    return read(fragments), read(segments)


def read(dataset: Labels) -> np.ndarray:
    return np.asarray(zarr.open_array(str(dataset.store), mode="r")[:])


def count_ids(labels: np.ndarray) -> int:
    return int(np.count_nonzero(np.unique(labels)))


def test_references_exist():
    assert len(REFERENCES) >= 4, f"expected parity references in {REFERENCE_DIR}"
    tie_free = [
        path
        for path in REFERENCES
        if json.loads(path.read_text())["sample_data"].get("affs_dtype") == "float64"
    ]
    assert tie_free, "expected a reference on affinities without equal values"


@pytest.mark.parametrize("reference_path", REFERENCES, ids=lambda p: p.stem)
def test_same_segmentation_as_volara_1_0_5(reference_path: Path, tmp_path: Path):
    reference = json.loads(reference_path.read_text())
    sample = generate_sample_data(tmp_path / "sample.zarr", **reference["sample_data"])
    fragments, segments = run_pipeline(sample, reference["task"], tmp_path)
    truth = read(sample.labels)
    scores = segmentation_scores(segments, truth)
    figures = {
        "fragments": count_ids(fragments),
        "segments": count_ids(segments),
        **{k: round(v, 4) for k, v in scores.items()},
    }
    expected = {
        k: reference[k]
        for k in (
            "fragments",
            "segments",
            "voi_split",
            "voi_merge",
            "adapted_rand_error",
        )
    }
    expected["voi"] = round(reference["voi_split"] + reference["voi_merge"], 4)
    report = f"{reference['name']}: volara 2 {figures}, volara 1.0.5 {expected}"

    if reference["sample_data"].get("affs_dtype") == "float64":
        for key in ("fragments", "segments", "voi_split", "voi_merge"):
            assert figures[key] == expected[key], report
        assert figures["adapted_rand_error"] == expected["adapted_rand_error"], report
        return
    assert figures["voi"] <= expected["voi"] + SCORE_TOLERANCE, report
    assert (
        figures["adapted_rand_error"]
        <= expected["adapted_rand_error"] + SCORE_TOLERANCE
    ), report
    if figures["voi"] < expected["voi"] - 0.005:
        warnings.warn(
            f"better than volara 1.0.5: {report}", ParityImprovement, stacklevel=1
        )
