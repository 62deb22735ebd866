"""Run the yardstick's four-task pipeline with volara 2 (this repository),
one task after the other, and print the seconds and peak memory of each
stage as one JSON line.

Run by ``yardstick.py`` and ``scaling.py`` in a child process, so that the
memory of the process tree is this run's alone. ``object_storage.py`` adds
``--s3-data`` / ``--s3-out``: affinities read from, and fragments, segments
and the look-up table written to, an S3 server (SQLite and logs stay in
``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import TreeMemory, timed  # noqa: E402
from funlib.geometry import Coordinate  # noqa: E402

from volara.blockwise import AffAgglom, ExtractFrags, GraphMWS, Pipeline, Relabel  # noqa: E402
from volara.datasets import Affs, Labels  # noqa: E402
from volara.dbs import SQLite  # noqa: E402
from volara.logging import set_log_basedir  # noqa: E402
from volara.lut import LUT  # noqa: E402


def _join(base: Path | str, name: str) -> Path | str:
    return f"{base}/{name}" if isinstance(base, str) else base / name


def stages(
    data: Path | str,
    out: Path,
    workers: int,
    block_size,
    context,
    biases,
    arrays_out: Path | str | None = None,
    s3_kwargs: dict | None = None,
):
    """The four tasks; ``data`` holds the affinities, ``arrays_out`` (``out``
    if None) receives fragments, segments and the look-up table; either may
    be an ``s3://`` url reached with ``s3_kwargs``."""
    arrays_out = out if arrays_out is None else arrays_out
    affs = Affs(store=_join(data, "affinities"), s3_kwargs=s3_kwargs)
    short = [o for o in affs.neighborhood if max(abs(c) for c in o) == 1]
    long = [o for o in affs.neighborhood if max(abs(c) for c in o) > 1]
    db = SQLite(
        path=out / "graph.sqlite",
        edge_attrs={"adj_weight": "float", "lr_weight": "float"},
    )
    output = _join(arrays_out, "output.zarr")
    fragments = Labels(store=_join(output, "fragments"), s3_kwargs=s3_kwargs)
    lut = LUT(path=_join(arrays_out, "lut.npz"), s3_kwargs=s3_kwargs)
    shared = dict(
        db=db,
        affs_data=affs,
        frags_data=fragments,
        block_size=Coordinate(block_size),
        context=Coordinate(context),
        num_workers=workers,
    )
    short_bias, long_bias = biases
    return {
        "ExtractFrags": ExtractFrags(
            bias=[short_bias if o in short else long_bias for o in affs.neighborhood],
            **shared,
        ),
        "AffAgglom": AffAgglom(
            scores={"adj_weight": short, "lr_weight": long}, **shared
        ),
        "GraphMWS": GraphMWS(
            db=db,
            lut=lut,
            weights={"adj_weight": (1.0, short_bias), "lr_weight": (1.0, long_bias)},
            roi=affs.array("r").roi,
        ),
        "Relabel": Relabel(
            frags_data=fragments,
            seg_data=Labels(store=_join(output, "segments"), s3_kwargs=s3_kwargs),
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
        "tasks as one pipeline, in one daisy run (as the README runs them)",
    )
    parser.add_argument("--s3-data", help="s3:// url holding `affinities`")
    parser.add_argument(
        "--s3-out", help="s3:// url for output.zarr/{fragments,segments}, lut.npz"
    )
    parser.add_argument("--s3-kwargs", type=json.loads, help="s3fs options, JSON")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    set_log_basedir(args.out / "logs")
    tasks = stages(
        args.s3_data or args.data,
        args.out,
        args.workers,
        args.block_size,
        args.context,
        args.bias,
        arrays_out=args.s3_out,
        s3_kwargs=args.s3_kwargs,
    )
    figures: dict = {}
    start = time.perf_counter()
    with TreeMemory() as memory:
        if args.mode == "pipeline":
            pipeline = Pipeline()
            for task in tasks.values():
                pipeline = pipeline + task
            with timed(figures, "total", memory):
                _check(pipeline.run_blockwise(progress=False, summary=False))
        else:
            for name, task in tasks.items():
                with timed(figures, name, memory):
                    _check(Pipeline(task).run_blockwise(progress=False, summary=False))
            figures["total"] = round(time.perf_counter() - start, 3)
            figures["total_cpu"] = round(
                sum(figures[f"{name}_cpu"] for name in tasks), 3
            )
    figures["segments"] = str(_join(args.s3_out or args.out, "output.zarr/segments"))
    print(json.dumps(figures))


def _check(states) -> None:
    for name, state in states.items():
        if state.skipped_count:
            raise RuntimeError(
                f"{name}: {state.skipped_count} blocks were recorded as done by an "
                "earlier run and skipped; benchmark from an empty --out directory"
            )
        if state.completed_count != state.total_block_count:
            raise RuntimeError(f"{name}: not every block completed: {state}")


if __name__ == "__main__":
    main()
