"""Scaling: the yardstick pipeline on the yardstick volume and on one 4x
larger (twice as long in y and x, four times the cells), same blocks and
workers.

Targets: the larger volume takes at most 4.4x the time, and each worker's
peak memory stays the same (memory grows with the block, not the volume).
GraphMWS is one block over the whole graph, so its memory grows with the
volume by design; it is reported but not part of the per-worker check.

    python benchmarks/scaling.py [--factor 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from common import print_json, ratio, run_driver
from yardstick import DRIVERS, STAGES, YARDSTICK, sample_data

BLOCKWISE_STAGES = ["ExtractFrags", "AffAgglom", "Relabel"]


def run(data: Path, out: Path, workers: int) -> dict[str, Any]:
    """The pipeline from scratch: earlier outputs and block tracking go."""
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, str(DRIVERS["volara2"]), "--data", str(data)]
    command += ["--out", str(out), "--workers", str(workers), "--mode", "stages"]
    return run_driver(command, out.parent / f"{out.name}.log")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("bench_output/scaling"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--factor",
        type=int,
        default=2,
        help="the larger volume is this many times longer in y and in x",
    )
    args = parser.parse_args()
    workdir = args.workdir.absolute()
    z, y, x = YARDSTICK["shape"]
    large_shape = (z, y * args.factor, x * args.factor)
    volumes = {
        "base": dict(YARDSTICK),
        "large": {
            **YARDSTICK,
            "shape": large_shape,
            "num_cells": YARDSTICK["num_cells"] * args.factor**2,
        },
    }
    results = {}
    for name, parameters in volumes.items():
        data = sample_data(workdir / name, **parameters)
        results[name] = run(data, workdir / name / "run", args.workers)
    base, large = results["base"], results["large"]
    worker_memory = {
        stage: {
            "base_mb": base[f"{stage}_peak_worker_rss_mb"],
            "large_mb": large[f"{stage}_peak_worker_rss_mb"],
            "ratio": ratio(
                large[f"{stage}_peak_worker_rss_mb"],
                base[f"{stage}_peak_worker_rss_mb"],
            ),
        }
        for stage in STAGES
    }
    print_json(
        {
            "benchmark": "scaling",
            "base_shape": list(YARDSTICK["shape"]),
            "large_shape": list(large_shape),
            "volume_ratio": args.factor**2,
            "seconds": {"base": base["total"], "large": large["total"]},
            "time_ratio": ratio(large["total"], base["total"]),
            "cpu_ratio": ratio(large["total_cpu"], base["total_cpu"]),
            "target_time_ratio": round(1.1 * args.factor**2, 2),
            "stage_time_ratios": {
                stage: ratio(large[stage], base[stage]) for stage in STAGES
            },
            "peak_worker_memory": worker_memory,
            "largest_blockwise_worker_memory_ratio": max(
                worker_memory[stage]["ratio"] or 0 for stage in BLOCKWISE_STAGES
            ),
        }
    )


if __name__ == "__main__":
    main()
