"""Run the yardstick's four-task pipeline with volara 1.0.5, one task after
the other, and print the seconds and peak memory of each stage as one JSON
line.

Runs in a separate virtual environment that has ``volara==1.0.5`` (and
daisy 1.x) installed; ``yardstick.py --volara1-python`` starts it. Only a
benchmark driver: volara 2 does not depend on volara 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zarr  # noqa: E402
from common import TreeMemory, timed  # noqa: E402
from funlib.geometry import Coordinate  # noqa: E402
from funlib.persistence import open_ds  # noqa: E402

from volara.blockwise import AffAgglom, ExtractFrags, GraphMWS, Relabel  # noqa: E402
from volara.datasets import Affs, Labels  # noqa: E402
from volara.dbs import SQLite  # noqa: E402
from volara.logging import set_log_basedir  # noqa: E402
from volara.lut import LUT  # noqa: E402


def stages(data: Path, out: Path, workers: int, block_size, context, biases):
    stored = zarr.open(str(data / "affinities"), mode="r").attrs["neighborhood"]
    neighborhood = [Coordinate(offset) for offset in stored]
    short = [o for o in neighborhood if max(abs(c) for c in o) == 1]
    long = [o for o in neighborhood if max(abs(c) for c in o) > 1]
    affs = Affs(store=data / "affinities", neighborhood=neighborhood)
    db = SQLite(
        path=out / "graph.sqlite",
        edge_attrs={"adj_weight": "float", "lr_weight": "float"},
    )
    fragments = Labels(store=out / "output.zarr" / "fragments")
    lut = LUT(path=out / "lut.npz")
    roi = open_ds(data / "affinities").roi
    short_bias, long_bias = biases
    shared = dict(
        db=db,
        affs_data=affs,
        frags_data=fragments,
        block_size=Coordinate(block_size),
        context=Coordinate(context),
        num_workers=workers,
    )
    return {
        "ExtractFrags": ExtractFrags(
            bias=[short_bias if o in short else long_bias for o in neighborhood],
            **shared,
        ),
        "AffAgglom": AffAgglom(
            scores={"adj_weight": short, "lr_weight": long}, **shared
        ),
        "GraphMWS": GraphMWS(
            db=db,
            lut=lut,
            weights={"adj_weight": (1.0, short_bias), "lr_weight": (1.0, long_bias)},
            roi=[roi.get_begin(), roi.get_shape()],
        ),
        "Relabel": Relabel(
            frags_data=fragments,
            seg_data=Labels(store=out / "output.zarr" / "segments"),
            lut=lut,
            block_size=Coordinate(block_size),
            num_workers=workers,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--block-size", type=int, nargs=3, default=(20, 80, 80))
    parser.add_argument("--context", type=int, nargs=3, default=(10, 40, 40))
    parser.add_argument("--bias", type=float, nargs=2, default=(-0.4, -0.7))
    parser.add_argument(
        "--mode",
        choices=["stages", "pipeline"],
        default="stages",
        help="stages: one task after the other, each timed; pipeline: the four "
        "tasks as one pipeline (as the README runs them)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    set_log_basedir(args.out / "logs")
    tasks = stages(
        args.data, args.out, args.workers, args.block_size, args.context, args.bias
    )
    figures: dict = {}
    start = time.perf_counter()
    with TreeMemory() as memory:
        if args.mode == "pipeline":
            pipeline = None
            for task in tasks.values():
                pipeline = task if pipeline is None else pipeline + task
            # volara 1's Pipeline.run_blockwise returns nothing; the scores
            # of the segmentation show whether every block ran
            with timed(figures, "total", memory):
                pipeline.run_blockwise()
        else:
            for name, task in tasks.items():
                with timed(figures, name, memory):
                    if not task.run_blockwise():
                        raise RuntimeError(f"{name}: not every block completed")
            figures["total"] = round(time.perf_counter() - start, 3)
            figures["total_cpu"] = round(
                sum(figures[f"{name}_cpu"] for name in tasks), 3
            )
    figures["segments"] = str(args.out / "output.zarr" / "segments")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
