"""The segmentation demo behind ``volara-cli demo``.

Generates EM-like sample data (ground-truth cells and their noisy
affinities), runs the four-task pipeline ExtractFrags + AffAgglom + GraphMWS +
Relabel on it and scores the segmentation against the ground truth.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from funlib.geometry import Coordinate

from .blockwise import AffAgglom, ExtractFrags, GraphMWS, Pipeline, Relabel
from .datasets import Affs, Labels
from .dbs import PostgreSQL, SQLite
from .kernels.metrics import segmentation_scores
from .lut import LUT
from .sample_data import generate_sample_data

logger = logging.getLogger(__name__)

SHORT_RANGE_BIAS = -0.4
LONG_RANGE_BIAS = -0.7


def demo_pipeline(
    workdir: Path,
    db: SQLite | PostgreSQL | None = None,
    num_workers: int = 2,
    block_size: tuple[int, int, int] = (20, 80, 80),
    context: tuple[int, int, int] = (10, 40, 40),
) -> Pipeline:
    """The four-task segmentation pipeline over ``workdir/sample.zarr``."""
    container = workdir / "sample.zarr"
    affs = Affs(store=container / "affinities")
    neighborhood = affs.neighborhood or []
    short = [offset for offset in neighborhood if max(abs(o) for o in offset) == 1]
    long = [offset for offset in neighborhood if max(abs(o) for o in offset) > 1]
    if db is None:
        db = SQLite(path=workdir / "graph.sqlite")
    db = db.model_copy(
        update={"edge_attrs": {"adj_weight": "float", "lr_weight": "float"}}
    )
    fragments = Labels(store=container / "fragments")
    lut = LUT(path=workdir / "lut.npz")
    # what the two blockwise graph tasks share: inputs, graph and block layout
    over_fragments: dict = dict(
        db=db,
        affs_data=affs,
        frags_data=fragments,
        block_size=Coordinate(block_size),
        context=Coordinate(context),
        num_workers=num_workers,
    )
    extract_frags = ExtractFrags(
        bias=[
            SHORT_RANGE_BIAS if o in short else LONG_RANGE_BIAS for o in neighborhood
        ],
        **over_fragments,
    )
    aff_agglom = AffAgglom(
        scores={"adj_weight": short, "lr_weight": long}, **over_fragments
    )
    roi = affs.array("r").roi
    graph_mws = GraphMWS(
        db=db,
        lut=lut,
        weights={
            "adj_weight": (1.0, SHORT_RANGE_BIAS),
            "lr_weight": (1.0, LONG_RANGE_BIAS),
        },
        roi=roi,
    )
    relabel = Relabel(
        frags_data=fragments,
        seg_data=Labels(store=container / "segments"),
        lut=lut,
        block_size=Coordinate(block_size),
        num_workers=num_workers,
    )
    return extract_frags + aff_agglom + graph_mws + relabel


def run_demo(
    workdir: Path,
    use_postgres: bool = False,
    num_workers: int = 2,
    shape: tuple[int, int, int] = (60, 240, 240),
    noise: float = 0.15,
) -> dict[str, Any]:
    """Generate data, run the pipeline, return the segmentation scores."""
    from .logging import set_log_basedir

    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    set_log_basedir(workdir / "volara_logs")
    container = workdir / "sample.zarr"
    if not (container / "affinities").exists():
        generate_sample_data(container, shape=shape, noise=noise)
    db: SQLite | PostgreSQL = (
        PostgreSQL(host="127.0.0.1", name="volara_demo")
        if use_postgres
        else SQLite(path=workdir / "graph.sqlite")
    )
    pipeline = demo_pipeline(workdir, db=db, num_workers=num_workers)
    states = pipeline.run_blockwise(multiprocessing=num_workers > 0)
    segments = Labels(store=container / "segments").array("r")[:]
    truth = Labels(store=container / "labels").array("r")[:]
    scores = segmentation_scores(np.asarray(segments), np.asarray(truth))
    scores["failed_blocks"] = sum(state.failed_count for state in states.values())
    return scores
