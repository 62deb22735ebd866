"""The yardstick: the four-task segmentation pipeline (ExtractFrags,
AffAgglom, GraphMWS, Relabel on SQLite) over generated EM-like data, with
volara 2 and, side by side in the same run, volara 1.0.5.

Prints one JSON object: per implementation the seconds of each stage, the
total, the peak resident memory of the whole process tree (driver plus
workers), VOI and adapted Rand error against the ground truth; and the
ratios volara 1 / volara 2 (above 1: volara 2 is faster or smaller).

    python benchmarks/yardstick.py                       # volara 2 only
    python benchmarks/yardstick.py --volara1-python /work/v1venv/bin/python

The volara 1 environment: ``python3 -m venv v1venv && v1venv/bin/pip install
volara==1.0.5``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from common import interleaved, print_json, ratio, run_driver

from volara.kernels.metrics import segmentation_scores
from volara.sample_data import generate_sample_data

HERE = Path(__file__).resolve().parent
DRIVERS = {
    "volara2": HERE / "drivers" / "volara2_pipeline.py",
    "volara1": HERE / "drivers" / "volara1_pipeline.py",
}
STAGES = ["ExtractFrags", "AffAgglom", "GraphMWS", "Relabel"]
YARDSTICK = dict(
    shape=(60, 240, 240), voxel_size=(40, 4, 4), num_cells=150, noise=0.15, seed=0
)


def sample_data(workdir: Path, **parameters: Any) -> Path:
    """The generated volume for ``parameters``, written once and reused."""
    container = workdir / "data" / "sample.zarr"
    marker = workdir / "data" / "parameters.json"
    wanted = json.dumps(parameters, sort_keys=True)
    if not marker.exists() or marker.read_text() != wanted:
        if container.exists():
            shutil.rmtree(container)
        generate_sample_data(container, **parameters)
        marker.write_text(wanted)
    return container


def run_implementation(
    name: str, python: str, mode: str, data: Path, out: Path, workers: int
) -> dict[str, Any]:
    """Run one implementation's driver from scratch and score its result."""
    if out.exists():
        shutil.rmtree(out)
    command = [python, str(DRIVERS[name]), "--data", str(data), "--out", str(out)]
    command += ["--workers", str(workers), "--mode", mode]
    figures = run_driver(
        command, out.parent / f"{out.name}.log", own_environment=name == "volara2"
    )
    peaks = [v for k, v in figures.items() if k.endswith("_peak_rss_mb")]
    figures["peak_rss_mb"] = max(peaks)
    segments = np.asarray(zarr.open(figures.pop("segments"), mode="r")[:])
    truth = np.asarray(zarr.open(str(data / "labels"), mode="r")[:])
    figures.update(
        {k: round(v, 4) for k, v in segmentation_scores(segments, truth).items()}
    )
    return figures


def compare(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """volara 1 / volara 2 for every figure both have (seconds: above 1
    means volara 2 is faster), and the VOI difference."""
    keys = [
        k
        for k in new
        if k in old
        and isinstance(new[k], int | float)
        and not k.startswith(("voi", "adapted"))
    ]
    ratios: dict[str, Any] = {k: ratio(old[k], new[k]) for k in keys}
    ratios["voi_volara2_minus_volara1"] = round(new["voi"] - old["voi"], 4)
    return ratios


def summarize(runs: dict[tuple[str, str], list[dict[str, Any]]]) -> dict[str, Any]:
    """Per implementation and mode the run with the smallest total (the
    least disturbed by other load), and volara 1 / volara 2 ratios."""
    best = {
        key: min(results, key=lambda r: r["total"]) for key, results in runs.items()
    }
    summary: dict[str, Any] = {}
    for (name, mode), figures in best.items():
        summary.setdefault(mode, {})[name] = figures
        figures["all_totals"] = [r["total"] for r in runs[(name, mode)]]
    for by_name in summary.values():
        if "volara1" in by_name:
            by_name["volara1_over_volara2"] = compare(
                by_name["volara1"], by_name["volara2"]
            )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("bench_output/yardstick"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--volara1-python",
        help="python of a virtual environment with volara==1.0.5; runs it side by side",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per implementation, alternating"
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=["stages", "pipeline"],
        default=["stages", "pipeline"],
        help="stages: tasks one after the other, each timed; pipeline: the "
        "four tasks as one pipeline, as the README runs them",
    )
    args = parser.parse_args()
    workdir = args.workdir.absolute()
    data = sample_data(workdir, **YARDSTICK)
    pythons = {"volara2": sys.executable}
    if args.volara1_python:
        pythons["volara1"] = args.volara1_python
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    pairs = [(name, mode) for mode in args.modes for name in pythons]
    for i, (name, mode) in enumerate(interleaved(pairs, args.repeats)):
        out = workdir / f"{name}-{mode}-run{i // len(pairs)}"
        figures = run_implementation(name, pythons[name], mode, data, out, args.workers)
        runs.setdefault((name, mode), []).append(figures)
    result = {
        "benchmark": "yardstick",
        "data": {**YARDSTICK, "block_size": [20, 80, 80], "context": [10, 40, 40]},
        "workers": args.workers,
        **summarize(runs),
    }
    print_json(result)


if __name__ == "__main__":
    main()
