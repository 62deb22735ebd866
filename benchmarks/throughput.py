"""Relabel and Threshold against zarr's own read + write throughput.

The baseline reads every block of the input from zarr and writes it,
unchanged, into an output array of the same chunking: the least any
blockwise array-to-array task can cost. Relabel (fragments through a look-up
table, uint64) and Threshold (uint8 intensities to a uint8 mask) run over the
same blocks. Two settings, side by side:

- ``serial``: blocks one after another in this process, after setup: the
  cost per block (``ratio`` = task seconds / baseline seconds; 1 is zarr's
  own speed);
- ``parallel``: ``--workers`` worker processes, wall time including their
  start (the baseline's workers start a plain Python with zarr only).

    python benchmarks/throughput.py [--shape 60 480 480]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from common import interleaved, print_json, ratio
from funlib.geometry import Coordinate, Roi

from volara.blockwise import Pipeline, Relabel, Threshold
from volara.datasets import Labels, Raw
from volara.kernels.synthetic import random_cells, raw_from_labels
from volara.logging import set_log_basedir
from volara.lut import LUT

VOXEL_SIZE = Coordinate(40, 4, 4)
BLOCK_SIZE = Coordinate(20, 80, 80)


def write_inputs(workdir: Path, shape: tuple[int, ...], seed: int) -> Path:
    """Labels (uint64 cells) and raw (uint8) chunked by block, and a LUT
    merging cells in pairs; written once per shape."""
    container = workdir / "inputs.zarr"
    marker = workdir / "inputs.json"
    wanted = json.dumps([list(shape), seed])
    if marker.exists() and marker.read_text() == wanted:
        return container
    if container.exists():
        shutil.rmtree(container)
    rng = np.random.default_rng(seed)
    num_cells = max(int(np.prod(shape) // 20_000), 2)
    labels = random_cells(shape, VOXEL_SIZE, num_cells, rng)
    raw = raw_from_labels(labels, 0.1, rng)
    for name, data in [("labels", labels), ("raw", raw)]:
        dataset = Labels(store=container / name)
        dataset.prepare(
            shape=shape,
            chunk_shape=BLOCK_SIZE,
            offset=(0, 0, 0),
            voxel_size=VOXEL_SIZE,
            units=["nm"] * 3,
            axis_names=["z", "y", "x"],
            types=["space"] * 3,
            dtype=data.dtype,
        )
        array = dataset.array("r+")
        array[array.roi] = data
    ids = np.arange(1, num_cells + 1, dtype=np.uint64)
    LUT(path=workdir / "lut.npz").save(np.stack([ids, (ids + 1) // 2]))
    marker.write_text(wanted)
    return container


def block_slices(shape: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """The blocks of the tasks, in voxels, cut at the end of the volume."""
    grid = [-(-s // b) for s, b in zip(shape, BLOCK_SIZE, strict=True)]
    return [
        tuple(
            slice(i * b, min((i + 1) * b, s))
            for i, b, s in zip(index, BLOCK_SIZE, shape, strict=True)
        )
        for index in np.ndindex(*grid)
    ]


def copy_blocks(job: tuple[str, str, list]) -> None:
    """The baseline: read each block, write it unchanged."""
    source, target, slices = job
    read = zarr.open_array(source, mode="r")
    write = zarr.open_array(target, mode="r+")
    for block in slices:
        write[block] = read[block]


def prepare_copy(source: Path, target: Path) -> None:
    """An empty array like ``source``, prepared as volara prepares outputs
    (same codecs and metadata)."""
    read = Labels(store=source).array("r")
    Labels(store=target).drop()
    Labels(store=target).prepare(
        shape=read.shape,
        chunk_shape=read._source_data.chunks,
        offset=read.offset,
        voxel_size=read.voxel_size,
        units=read.units,
        axis_names=read.axis_names,
        types=read.types,
        dtype=read.dtype,
    )


def baseline_seconds(source: Path, target: Path, workers: int) -> float:
    prepare_copy(source, target)
    blocks = block_slices(zarr.open_array(str(source), mode="r").shape)
    start = time.perf_counter()
    if workers == 0:
        copy_blocks((str(source), str(target), blocks))
    else:
        jobs = [(str(source), str(target), blocks[w::workers]) for w in range(workers)]
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            pool.map(copy_blocks, jobs)
    return time.perf_counter() - start


def task_seconds(make_task: Callable[[int], Any], workers: int) -> float:
    """Wall seconds of a fresh run; ``workers=0`` runs the blocks in this
    process after the setup (what one block costs, without worker start)."""
    task = make_task(max(workers, 1))
    task.drop(drop_outputs=True)
    if workers > 0:
        start = time.perf_counter()
        Pipeline(task).run_blockwise(progress=False, summary=False)
        return time.perf_counter() - start
    import daisy.v2 as daisy

    task.prepare_run()
    write_roi, size = task.write_roi, task.write_size
    rois = [
        Roi(write_roi.offset + size * Coordinate(index), size).intersect(write_roi)
        for index in np.ndindex(*(-(-write_roi.shape // size)))
    ]
    with task.process_block_func() as process_block:
        start = time.perf_counter()
        for roi in rois:
            process_block(daisy.Block(roi, roi, roi))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("bench_output/throughput"))
    parser.add_argument("--shape", type=int, nargs=3, default=(60, 480, 480))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    workdir = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    set_log_basedir(workdir / "logs")
    inputs = write_inputs(workdir, tuple(args.shape), seed=0)
    outputs = workdir / "outputs.zarr"
    tasks = {
        "Relabel": (
            inputs / "labels",
            lambda workers: Relabel(
                frags_data=Labels(store=inputs / "labels"),
                seg_data=Labels(store=outputs / "segments"),
                lut=LUT(path=workdir / "lut.npz"),
                block_size=BLOCK_SIZE,
                num_workers=workers,
            ),
        ),
        "Threshold": (
            inputs / "raw",
            lambda workers: Threshold(
                in_data=Raw(store=inputs / "raw"),
                mask=Labels(store=outputs / "mask"),
                threshold=128,
                block_size=BLOCK_SIZE,
                num_workers=workers,
            ),
        ),
    }
    voxels = int(np.prod(args.shape))
    figures: dict[str, Any] = {
        "benchmark": "throughput",
        "shape": list(args.shape),
        "block_size": list(BLOCK_SIZE),
        "workers": args.workers,
    }
    for name, (source, make_task) in tasks.items():
        result: dict[str, Any] = {}
        for setting, workers in [("serial", 0), ("parallel", args.workers)]:
            seconds: dict[str, list[float]] = {"task": [], "zarr": []}
            for side in interleaved(["task", "zarr"], args.repeats):
                if side == "task":
                    seconds[side].append(task_seconds(make_task, workers))
                else:
                    target = outputs / f"copy-{source.name}"
                    seconds[side].append(baseline_seconds(source, target, workers))
            best = {side: min(values) for side, values in seconds.items()}
            result[setting] = {
                "task_seconds": round(best["task"], 3),
                "zarr_seconds": round(best["zarr"], 3),
                "ratio": ratio(best["task"], best["zarr"]),
                "task_mvoxels_per_second": round(voxels / best["task"] / 1e6, 1),
                "zarr_mvoxels_per_second": round(voxels / best["zarr"] / 1e6, 1),
            }
        figures[name] = result
    print_json(figures)


if __name__ == "__main__":
    main()
