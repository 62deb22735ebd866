"""Scheduling: how many blocks per second volara hands out and records when
the blocks themselves do nothing.

A no-op task over ``--blocks`` blocks (default 10,000) with ``--workers``
worker processes (default 2). The wall time includes starting the workers
(importing volara in each) and recording every finished block; the steady
rate leaves out that fixed cost by also timing a run of ``--workers``
blocks and taking the difference. The same blocks through daisy alone (a
plain function, no volara task around it), timed in the same run, show
what volara adds.

    python benchmarks/scheduling.py
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import daisy.v2 as daisy
from common import do_nothing, print_json, ratio
from funlib.geometry import Roi
from noop_task import NoOp

from volara.blockwise import Pipeline
from volara.logging import set_log_basedir


def run_seconds(num_blocks: int, workers: int) -> float:
    task = NoOp(num_blocks=num_blocks, num_workers=workers)
    task.drop()
    start = time.perf_counter()
    states = Pipeline(task).run_blockwise(progress=False, summary=False)
    seconds = time.perf_counter() - start
    state = states[task.task_name]
    if state.completed_count != num_blocks:
        raise RuntimeError(f"only {state.completed_count} of {num_blocks} blocks ran")
    return seconds


def daisy_seconds(num_blocks: int, workers: int, tracking: Path) -> float:
    """The same blocks through daisy 2 alone, with its block tracking."""
    task = daisy.Task(
        task_id=f"daisy-noop-{num_blocks}",
        total_roi=Roi((0, 0, 0), (1, 1, num_blocks)),
        read_roi=Roi((0, 0, 0), (1, 1, 1)),
        write_roi=Roi((0, 0, 0), (1, 1, 1)),
        process_function=do_nothing,
        read_write_conflict=False,
        fit="valid",
        max_workers=workers,
        tracking_path=str(tracking / f"daisy-noop-{num_blocks}.zarr"),
    )
    if tracking.exists():
        shutil.rmtree(tracking)
    start = time.perf_counter()
    daisy.run_blockwise(daisy.Pipeline([task], []), progress=False, summary=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("bench_output/scheduling"))
    parser.add_argument("--blocks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    set_log_basedir(args.workdir.absolute() / "logs")
    tracking = args.workdir.absolute() / "daisy-tracking"
    runs, daisy_runs = [], []
    for _ in range(args.repeats):
        startup = run_seconds(args.workers, args.workers)
        seconds = run_seconds(args.blocks, args.workers)
        runs.append((seconds, startup))
        daisy_runs.append(daisy_seconds(args.blocks, args.workers, tracking))
    seconds, startup = min(runs)
    daisy_alone = min(daisy_runs)
    print_json(
        {
            "benchmark": "scheduling",
            "blocks": args.blocks,
            "workers": args.workers,
            "seconds": round(seconds, 3),
            "blocks_per_second": round(args.blocks / seconds, 1),
            "startup_seconds": round(startup, 3),
            "steady_blocks_per_second": round(
                (args.blocks - args.workers) / max(seconds - startup, 1e-9), 1
            ),
            "daisy_alone_seconds": round(daisy_alone, 3),
            "daisy_alone_blocks_per_second": round(args.blocks / daisy_alone, 1),
            "volara_over_daisy_seconds": ratio(seconds, daisy_alone),
            "target_blocks_per_second": 2000,
            "all_runs_seconds": [round(s, 3) for s, _ in runs],
            "ratio_to_target": ratio(args.blocks / seconds, 2000),
        }
    )


if __name__ == "__main__":
    main()
