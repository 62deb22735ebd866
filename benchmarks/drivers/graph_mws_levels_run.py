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

from common import TreeMemory, cpu_seconds, timed  # noqa: E402
from funlib.geometry import Coordinate, Roi  # noqa: E402

from volara.blockwise import GraphMWS, Pipeline  # noqa: E402
from volara.dbs import PostgreSQL  # noqa: E402
from volara.logging import set_log_basedir  # noqa: E402
from volara.lut import LUT  # noqa: E402

WEIGHTS = {"adj_weight": (1.0, -0.4), "lr_weight": (1.0, -0.7)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db-name", required=True)
    parser.add_argument("--lut", type=Path, required=True)
    parser.add_argument("--roi", type=int, nargs=3, required=True, help="shape")
    parser.add_argument("--block-size", type=int, nargs=3)
    parser.add_argument("--workers", type=int, default=2)
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
    stages = task.stages()
    tasks = stages.tasks if stages is not None else [task]
    figures: dict = {"stages": {}}
    start, start_cpu = time.perf_counter(), cpu_seconds()
    with TreeMemory() as memory:
        for stage in tasks:
            stage_figures: dict = {}
            with timed(stage_figures, "seconds", memory):
                results = Pipeline(stage).run_blockwise(progress=False, summary=False)
            for name, result in results.items():
                if not result.finished:
                    raise RuntimeError(f"{name} did not finish: {result}")
            stage_figures["blocks"] = sum(r.total_block_count for r in results.values())
            level = re.search(r"level(\d+)", stage.task_name)
            key = f"L{level.group(1)} " if level else ""
            figures["stages"][key + stage.task_type] = stage_figures
        figures["seconds"] = round(time.perf_counter() - start, 1)
        figures["cpu_seconds"] = round(cpu_seconds() - start_cpu, 1)
        figures["peak_rss_mb"] = round(memory.peak_bytes / 2**20, 1)
        figures["peak_worker_rss_mb"] = round(memory.peak_child_bytes / 2**20, 1)
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
