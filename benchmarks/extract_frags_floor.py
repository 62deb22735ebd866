"""ExtractFrags against its floor: mwatershed alone over the same blocks.

The floor is what the watershed itself costs: ``mwatershed.agglom`` on each
block's read region of the yardstick affinities (plus bias, as float64),
timed call by call in CPU seconds of one core (``--workers`` processes at
once), summed, and divided by the number of workers. ExtractFrags then runs
on the same data with the same workers:

- ``ratio_to_floor``: its wall time over the floor (target: at most 1.3);
- ``cpu_ratio_to_floor``: its CPU seconds (all workers) over the summed
  floor; what the task adds around the watershed, hardly affected by other
  programs competing for the cores, which wall times are.

``--tie-break`` also times the calls on weights with volara's tie-break
jitter added (distinct weights take mwatershed longer to sort than the many
equal ones of clipped affinities).

    python benchmarks/extract_frags_floor.py [--repeats 2] [--tie-break]
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import time
from pathlib import Path

import numpy as np
from common import cpu_seconds, print_json, ratio
from funlib.geometry import Coordinate, Roi
from yardstick import YARDSTICK, sample_data

BLOCK_SIZE = Coordinate(20, 80, 80)
CONTEXT = Coordinate(10, 40, 40)
BIAS = (-0.4, -0.7)


def read_rois(volume: Roi, voxel_size: Coordinate) -> list[Roi]:
    """Each block's read region: its write region (tiling the volume, cut
    at its end) grown by the context."""
    write_size = BLOCK_SIZE * voxel_size
    context = CONTEXT * voxel_size
    rois = []
    for index in np.ndindex(*(-(-volume.shape // write_size))):
        write = Roi(volume.offset + write_size * Coordinate(index), write_size)
        rois.append(write.intersect(volume).grow(context, context))
    return rois


def _time_block(job: tuple[str, list, list, bool]) -> float:
    """CPU seconds of one ``mwatershed.agglom`` call on one block's weights
    (mwatershed runs in the calling thread)."""
    import mwatershed
    from funlib.persistence import open_ds

    from volara.datasets import read_region
    from volara.kernels import mutex_watershed as mws

    store, roi_values, biases, tie_break = job
    array = open_ds(store)
    roi = Roi(roi_values[:3], roi_values[3:])
    weights = read_region(array, roi).astype(np.float64)
    weights += np.asarray(biases).reshape(-1, 1, 1, 1)
    if tie_break:
        mws.add_tie_break_jitter(weights, roi.offset / array.voxel_size)
    neighborhood = [list(o) for o in array._source_data.attrs["neighborhood"]]
    start = time.thread_time()
    mwatershed.agglom(weights, neighborhood)
    return time.thread_time() - start


def floor_seconds(data: Path, workers: int, tie_break: bool) -> list[float]:
    """Per-block seconds of mwatershed alone, ``workers`` blocks at a time."""
    from funlib.persistence import open_ds

    array = open_ds(str(data / "affinities"))
    neighborhood = array._source_data.attrs["neighborhood"]
    biases = [BIAS[0] if max(map(abs, o)) == 1 else BIAS[1] for o in neighborhood]
    jobs = [
        (str(data / "affinities"), [*roi.offset, *roi.shape], biases, tie_break)
        for roi in read_rois(array.roi, array.voxel_size)
    ]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return list(pool.imap_unordered(_time_block, jobs))


def extract_frags_seconds(data: Path, out: Path, workers: int) -> tuple[float, float]:
    """Wall and CPU seconds (this process and its workers) of a fresh run."""
    from volara.blockwise import ExtractFrags, Pipeline
    from volara.datasets import Affs, Labels
    from volara.dbs import SQLite
    from volara.logging import set_log_basedir

    if out.exists():
        shutil.rmtree(out)
    set_log_basedir(out / "logs")
    affs = Affs(store=data / "affinities")
    task = ExtractFrags(
        db=SQLite(path=out / "graph.sqlite"),
        affs_data=affs,
        frags_data=Labels(store=out / "output.zarr" / "fragments"),
        block_size=BLOCK_SIZE,
        context=CONTEXT,
        bias=[
            BIAS[0] if max(map(abs, o)) == 1 else BIAS[1]
            for o in affs.neighborhood or []
        ],
        num_workers=workers,
    )
    start, start_cpu = time.perf_counter(), cpu_seconds()
    Pipeline(task).run_blockwise(progress=False, summary=False)
    return time.perf_counter() - start, cpu_seconds() - start_cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path("bench_output/extract_frags_floor")
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--tie-break",
        action="store_true",
        help="also time the floor on weights with volara's tie-break jitter",
    )
    args = parser.parse_args()
    workdir = args.workdir.absolute()
    data = sample_data(workdir, **YARDSTICK)
    floors, jittered, runs = [], [], []
    num_blocks = 0
    for repeat in range(args.repeats):
        per_block = floor_seconds(data, args.workers, tie_break=False)
        num_blocks = len(per_block)
        floors.append(sum(per_block))
        if args.tie_break:
            jittered.append(sum(floor_seconds(data, args.workers, tie_break=True)))
        runs.append(extract_frags_seconds(data, workdir / f"run{repeat}", args.workers))
    # the smallest of each: the runs least slowed down by other load
    floor = min(floors) / args.workers
    seconds, cpu = min(runs)
    figures = {
        "benchmark": "extract_frags_floor",
        "workers": args.workers,
        "blocks": num_blocks,
        "mwatershed_cpu_seconds_summed": round(min(floors), 2),
        "floor_seconds": round(floor, 2),
        "extract_frags_seconds": round(seconds, 2),
        "extract_frags_cpu_seconds": round(cpu, 2),
        "ratio_to_floor": ratio(seconds, floor),
        "cpu_ratio_to_floor": ratio(cpu, min(floors)),
        "target_ratio": 1.3,
        "all_floors_summed": [round(f, 2) for f in floors],
        "all_extract_frags": [[round(w, 2), round(c, 2)] for w, c in runs],
    }
    if jittered:
        figures["floor_with_tie_break_seconds"] = round(min(jittered) / args.workers, 2)
        figures["ratio_to_floor_with_tie_break"] = ratio(
            seconds, min(jittered) / args.workers
        )
        figures["cpu_ratio_to_floor_with_tie_break"] = ratio(cpu, min(jittered))
    print_json(figures)


if __name__ == "__main__":
    main()
