"""Run GraphMWS once over an existing PostgreSQL graph, in memory or (with
``--block-size``) in levels, stage by stage, and print as one JSON line the
wall and CPU seconds and peak memory of each stage and in total (started by
``graph_mws_scale.py``)."""

from __future__ import annotations

import argparse
import json
import re
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from common import (  # noqa: E402
    TreeMemory,
    _children,
    _cpu_seconds_with_ended_children,
    cpu_seconds,
    timed,
)
from funlib.geometry import Coordinate, Roi  # noqa: E402

from volara.blockwise import GraphMWS, Pipeline  # noqa: E402
from volara.dbs import PostgreSQL  # noqa: E402
from volara.logging import set_log_basedir  # noqa: E402
from volara.lut import LUT  # noqa: E402

POSTMASTER_PID = "/var/lib/postgresql/15/main/postmaster.pid"
WEIGHTS = {"adj_weight": (1.0, -0.4), "lr_weight": (1.0, -0.7)}


def postgres_cpu_seconds() -> float:
    """CPU seconds of the PostgreSQL server: the postmaster with the ended
    backends it reaped and the live ones (0 if its pid file is unreadable)."""
    try:
        text = Path(POSTMASTER_PID).read_text()
    except OSError:
        return 0.0
    postmaster = int(text.split()[0])
    return _cpu_seconds_with_ended_children(postmaster) + sum(
        _cpu_seconds_with_ended_children(pid) for pid in _children(postmaster)
    )


def sample_blocks(task: GraphMWS, count: int) -> dict:
    """The first level's `GraphMWSBlocks.agglomerate` (reads, watershed, no
    writes) on ``count`` blocks around the middle of the grid, one after
    the other in this process: seconds of each, this process's peak RSS."""
    blocks = task.stages().tasks[0]  # type: ignore[union-attr]
    grid = np.array(max(blocks.grid_indices())) + 1
    middle = grid // 2
    steps = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (-1, 0, 0), (0, -1, 0)]
    chosen = [middle + np.array(step) for step in steps[:count]]
    graph = blocks.fragments_db.open("r")
    seconds, fragments = [], []
    for index in chosen:
        write_roi = Roi(
            blocks.roi.offset + blocks.block_size * Coordinate(index),
            blocks.block_size,
        )
        read_roi = write_roi.grow(blocks.context, blocks.context)
        start = time.perf_counter()
        table, _ = blocks.agglomerate(graph, read_roi, write_roi)
        seconds.append(round(time.perf_counter() - start, 2))
        fragments.append(int(table.shape[1]))
    return {
        "blocks_in_level_1": int(np.prod(grid)),
        "sampled_blocks": [list(map(int, i)) for i in chosen],
        "seconds": seconds,
        "fragments": fragments,
        "peak_rss_mb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db-name", required=True)
    parser.add_argument("--lut", type=Path, required=True)
    parser.add_argument("--roi", type=int, nargs=3, required=True, help="shape")
    parser.add_argument("--block-size", type=int, nargs=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--sample-blocks",
        type=int,
        default=0,
        help="only time the first level's watershed on this many middle blocks",
    )
    args = parser.parse_args()
    set_log_basedir(args.lut.parent / "logs")
    db = PostgreSQL(
        host="127.0.0.1",
        name=args.db_name,
        edge_attrs={name: "float" for name in WEIGHTS},
    )
    levels = args.block_size is not None
    task = GraphMWS(
        db=db,
        lut=LUT(path=args.lut),
        weights=WEIGHTS,
        roi=Roi((0, 0, 0), args.roi),
        block_size=Coordinate(args.block_size) if levels else None,
        num_workers=args.workers,
    )
    task.drop()
    if args.sample_blocks:
        print(json.dumps(sample_blocks(task, args.sample_blocks)))
        return
    stages = task.stages()
    tasks = stages.tasks if stages is not None else [task]
    figures: dict = {"stages": {}}
    start, start_cpu = time.perf_counter(), cpu_seconds()
    start_server = postgres_cpu_seconds()
    with TreeMemory() as memory:
        for stage in tasks:
            stage_figures: dict = {}
            server = postgres_cpu_seconds()
            with timed(stage_figures, "seconds", memory):
                results = Pipeline(stage).run_blockwise(progress=False, summary=False)
            stage_figures["postgres_cpu"] = round(postgres_cpu_seconds() - server, 1)
            for name, result in results.items():
                if not result.finished:
                    raise RuntimeError(f"{name} did not finish: {result}")
            stage_figures["blocks"] = sum(r.total_block_count for r in results.values())
            level = re.search(r"level(\d+)", stage.task_name)
            key = f"L{level.group(1)} " if level else ""
            figures["stages"][key + stage.task_type] = stage_figures
        figures["seconds"] = round(time.perf_counter() - start, 1)
        figures["cpu_seconds"] = round(cpu_seconds() - start_cpu, 1)
    figures["postgres_cpu_seconds"] = round(postgres_cpu_seconds() - start_server, 1)
    # each stage starts its own peak: the run's is the largest of them
    for key in ("peak_rss_mb", "peak_worker_rss_mb"):
        figures[key] = max(s[f"seconds_{key}"] for s in figures["stages"].values())
    # the largest RSS of any process of the tree that has ended and been waited
    # for (the prefork host is alive until this process exits; its workers
    # are its children, not this process's)
    figures["driver_maxrss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    if levels:
        figures["levels"] = len(task.level_block_sizes())
    table = task.lut.load()
    figures["fragments"] = int(table.shape[1])
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
