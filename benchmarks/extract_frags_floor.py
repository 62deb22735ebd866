"""ExtractFrags against its floor, and the mutex-watershed kernel against
mwatershed on the same blocks.

The floor is what the watershed itself costs: volara's kernel
(`volara.kernels.mws.agglom`) on each block's read region of the yardstick
affinities (plus bias, float32, with the block's global origin, as
ExtractFrags calls it), timed call by call in CPU seconds of one core
(``--workers`` processes at once), summed, and divided by the number of
workers. The same jobs also time ``mwatershed.agglom`` (on the float64 copy
it needs), the kernel volara 1.0.5 and earlier volara 2 used. ExtractFrags
then runs on the same data with the same workers:

- ``ratio_to_floor``: its wall time over the floor (target: at most 1.3);
- ``cpu_ratio_to_floor``: its CPU seconds (all workers) over the summed
  floor; what the task adds around the watershed, hardly affected by other
  programs competing for the cores, which wall times are;
- ``kernel_speedup``: mwatershed's summed CPU seconds over the kernel's.

Each job process loads the kernel before its clock starts (the compile is
measured by ``mws_kernel.py``).

    python benchmarks/extract_frags_floor.py [--repeats 2]
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


def _time_block(job: tuple[str, list, list]) -> tuple[float, float]:
    """CPU seconds of volara's kernel and of ``mwatershed.agglom`` on one
    block's weights (both run in the calling thread)."""
    import mwatershed
    from funlib.persistence import open_ds

    from volara.datasets import read_region
    from volara.kernels import mws

    store, roi_values, biases = job
    array = open_ds(store)
    roi = Roi(roi_values[:3], roi_values[3:])
    weights = read_region(array, roi).astype(np.float32)
    weights += np.asarray(biases, dtype=np.float32).reshape(-1, 1, 1, 1)
    neighborhood = [list(o) for o in array._source_data.attrs["neighborhood"]]
    origin = [int(o) for o in roi.offset / array.voxel_size]
    start = time.thread_time()
    mws.agglom(weights, neighborhood, origin=origin)
    kernel = time.thread_time() - start
    wide = weights.astype(np.float64)
    start = time.thread_time()
    mwatershed.agglom(wide, neighborhood)
    return kernel, time.thread_time() - start


def floor_seconds(data: Path, workers: int) -> list[tuple[float, float]]:
    """Per block, the seconds of the kernel and of mwatershed, ``workers``
    blocks at a time."""
    from funlib.persistence import open_ds

    array = open_ds(str(data / "affinities"))
    neighborhood = array._source_data.attrs["neighborhood"]
    biases = [BIAS[0] if max(map(abs, o)) == 1 else BIAS[1] for o in neighborhood]
    jobs = [
        (str(data / "affinities"), [*roi.offset, *roi.shape], biases)
        for roi in read_rois(array.roi, array.voxel_size)
    ]
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_load_kernel) as pool:
        return list(pool.imap_unordered(_time_block, jobs))


def _load_kernel() -> None:
    """Each job process loads the compiled kernel once, before any clock."""
    from volara.kernels import mws

    mws.warm_up()


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
    args = parser.parse_args()
    workdir = args.workdir.absolute()
    data = sample_data(workdir, **YARDSTICK)
    floors, mwatershed_floors, runs = [], [], []
    num_blocks = 0
    for repeat in range(args.repeats):
        per_block = floor_seconds(data, args.workers)
        num_blocks = len(per_block)
        floors.append(sum(kernel for kernel, _ in per_block))
        mwatershed_floors.append(sum(theirs for _, theirs in per_block))
        runs.append(extract_frags_seconds(data, workdir / f"run{repeat}", args.workers))
    # the smallest of each: the runs least slowed down by other load
    floor = min(floors) / args.workers
    seconds, cpu = min(runs)
    figures = {
        "benchmark": "extract_frags_floor",
        "workers": args.workers,
        "blocks": num_blocks,
        "kernel_cpu_seconds_summed": round(min(floors), 2),
        "mwatershed_cpu_seconds_summed": round(min(mwatershed_floors), 2),
        "kernel_speedup": ratio(min(mwatershed_floors), min(floors)),
        "floor_seconds": round(floor, 2),
        "extract_frags_seconds": round(seconds, 2),
        "extract_frags_cpu_seconds": round(cpu, 2),
        "ratio_to_floor": ratio(seconds, floor),
        "cpu_ratio_to_floor": ratio(cpu, min(floors)),
        "target_ratio": 1.3,
        "all_floors_summed": [round(f, 2) for f in floors],
        "all_mwatershed_summed": [round(f, 2) for f in mwatershed_floors],
        "all_extract_frags": [[round(w, 2), round(c, 2)] for w, c in runs],
    }
    print_json(figures)


if __name__ == "__main__":
    main()
