"""`volara-cli evaluate` on a volume whose two label arrays would take
gigabytes in memory: seconds, voxels/s and the peak RSS of the evaluating
process, against what the arrays themselves would take.

The ground truth is the Voronoi cells of ``--cells`` random seed points
(world units, voxels of (40, 4, 4)), computed on a grid of every
``COARSE``-th voxel in y and x and repeated to full resolution, slab by slab
of ``SLAB`` sections, so the whole volume is never in memory; every tenth
cell is unlabelled (0). The segmentation is the Voronoi cells of the same
seeds moved a little (boundaries disagree everywhere by a few voxels), with
every seventh cell merged into the next one and every fifth cut in two by a
plane through its seed. Both are written once into ``--workdir`` (default
``./bench_output/evaluate``) and reused.

Correctness: the first ``--check-sections`` sections are copied into arrays
of their own and scored by `volara.evaluate.evaluate` (small blocks, so many
tables are merged) and, in memory, by
`volara.kernels.metrics.segmentation_scores` (scikit-image; on the
segmentation numbered 1..n, since scikit-image's tables are as wide as the
largest id); they must agree to 1e-6.

    python benchmarks/evaluate.py [--shape 120 1024 1024] [--cells 10000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import TreeMemory, cpu_seconds, print_json
from scipy.spatial import cKDTree

from volara.datasets import Labels
from volara.evaluate import evaluate
from volara.kernels.metrics import segmentation_scores

VOXEL_SIZE = (40, 4, 4)
CHUNK_SHAPE = (20, 256, 256)
SLAB = 20
"""Sections generated at a time (one chunk deep)."""
COARSE = 4
"""Cells are computed on every COARSE-th voxel in y and x."""
JITTER_NM = 4.0
"""How far the segmentation's seeds move (standard deviation, per axis)."""
SPLIT_ID_OFFSET = 1 << 40
"""Added to the id of the cut-off half of a split cell: large uint64 ids."""
TOLERANCE = 1e-6


def prepare(path: Path, shape: tuple[int, ...]):
    dataset = Labels(store=path)
    dataset.drop()
    dataset.prepare(
        shape=shape,
        chunk_shape=CHUNK_SHAPE,
        offset=(0, 0, 0),
        voxel_size=VOXEL_SIZE,
        units=["nm"] * 3,
        axis_names=["z", "y", "x"],
        types=["space"] * 3,
        dtype=np.uint64,
    )
    return dataset.array("r+")._source_data


def coarse_points(z0: int, z1: int, shape: tuple[int, ...]) -> np.ndarray:
    """World positions of the coarse grid's points of sections z0..z1,
    (n, 3), the centre of each COARSE x COARSE patch."""
    zz = (np.arange(z0, z1) + 0.5) * VOXEL_SIZE[0]
    yy = (np.arange(0, shape[1], COARSE) + COARSE / 2) * VOXEL_SIZE[1]
    xx = (np.arange(0, shape[2], COARSE) + COARSE / 2) * VOXEL_SIZE[2]
    grid = np.meshgrid(zz, yy, xx, indexing="ij")
    return np.stack([g.ravel() for g in grid], axis=1)


def full_resolution(coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    full = np.repeat(np.repeat(coarse, COARSE, axis=1), COARSE, axis=2)
    return np.ascontiguousarray(full[:, : shape[1], : shape[2]])


def generate(workdir: Path, shape: tuple[int, ...], cells: int, seed: int) -> Path:
    """Write ``truth`` and ``segments`` into ``<workdir>/volume.zarr`` (and
    ``<workdir>/crop.zarr`` later); skipped when they exist for these
    arguments."""
    container = workdir / "volume.zarr"
    marker = workdir / "volume.json"
    wanted = json.dumps(
        {"shape": list(shape), "cells": cells, "seed": seed, "jitter": JITTER_NM}
    )
    if marker.exists() and marker.read_text() == wanted:
        return container
    marker.unlink(missing_ok=True)
    if container.exists():
        shutil.rmtree(container)
    rng = np.random.default_rng(seed)
    extent = np.asarray(shape) * np.asarray(VOXEL_SIZE)
    seeds = rng.uniform(0, extent, size=(cells, 3))
    moved = seeds + rng.normal(0, JITTER_NM, size=seeds.shape)
    ids = np.arange(1, cells + 1, dtype=np.uint64)
    truth_ids = np.where(ids % 10 == 0, 0, ids).astype(np.uint64)
    # merges: every seventh cell takes the next one's id
    segment_ids = np.where(ids % 7 == 0, ids + 1, ids).astype(np.uint64)
    segment_ids[-1] = ids[-1]
    # splits: every fifth cell, cut by a random plane through its seed
    split = ids % 5 == 0
    normals = rng.normal(size=(cells, 3))
    truth_tree, segment_tree = cKDTree(seeds), cKDTree(moved)
    truth = prepare(container / "truth", shape)
    segments = prepare(container / "segments", shape)
    for z0 in range(0, shape[0], SLAB):
        z1 = min(z0 + SLAB, shape[0])
        points = coarse_points(z0, z1, shape)
        coarse_shape = (z1 - z0, -(-shape[1] // COARSE), -(-shape[2] // COARSE))
        _, nearest = truth_tree.query(points, workers=-1)
        truth[z0:z1] = full_resolution(truth_ids[nearest].reshape(coarse_shape), shape)
        _, nearest = segment_tree.query(points, workers=-1)
        labels = segment_ids[nearest]
        side = np.einsum("ij,ij->i", points - moved[nearest], normals[nearest]) > 0
        labels[split[nearest] & side] += np.uint64(SPLIT_ID_OFFSET)
        segments[z0:z1] = full_resolution(labels.reshape(coarse_shape), shape)
        print(f"generated sections {z0}-{z1}", file=sys.stderr, flush=True)
    marker.write_text(wanted)
    return container


def crop(container: Path, workdir: Path, sections: int) -> Path:
    """The first ``sections`` sections of both arrays, as arrays of their own."""
    target = workdir / f"crop{sections}.zarr"
    for name in ["truth", "segments"]:
        source = Labels(store=container / name).array("r")._source_data
        shape = (min(sections, source.shape[0]), *source.shape[1:])
        prepare(target / name, shape)[:] = source[: shape[0]]
    return target


def run_cli(container: Path, threads: int | None) -> dict[str, Any]:
    """``volara-cli evaluate --json`` in a child process: its seconds, CPU
    seconds and peak RSS (sampled every 0.1 s)."""
    command = [sys.executable, "-m", "volara.cli", "evaluate"]
    command += [str(container / "segments"), str(container / "truth"), "--json"]
    if threads:
        command += ["--threads", str(threads)]
    start, start_cpu = time.perf_counter(), cpu_seconds()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    with TreeMemory(process.pid) as memory:
        output, _ = process.communicate()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"volara-cli evaluate failed (exit {process.returncode})")
    result = json.loads(output[output.index("{") :])
    return {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds() - start_cpu, 2),
        "peak_rss_mb": round(memory.peak_bytes / 2**20, 1),
        "result": result,
    }


def baseline_rss_mb() -> float:
    """Peak RSS of a process that only imports what the CLI imports for
    evaluate: what any run costs before its first block."""
    code = "import volara.cli, volara.evaluate, time; time.sleep(0.5)"
    process = subprocess.Popen([sys.executable, "-c", code])
    with TreeMemory(process.pid) as memory:
        process.wait()
    return round(memory.peak_bytes / 2**20, 1)


def check(crop_container: Path) -> dict[str, Any]:
    """Blockwise against in memory on the crop."""
    start = time.perf_counter()
    blockwise = evaluate(
        crop_container / "segments",
        crop_container / "truth",
        block_shape=(7, 200, 300),  # not a multiple of the chunks
    )
    blockwise_seconds = time.perf_counter() - start
    segments = Labels(store=crop_container / "segments").array("r")._source_data[:]
    truth = Labels(store=crop_container / "truth").array("r")._source_data[:]
    start = time.perf_counter()
    # skimage's tables are as wide as the largest id (2^40 here: terabytes);
    # VOI and Rand error do not depend on the ids, so number them densely
    segments = np.unique(segments, return_inverse=True)[1].reshape(segments.shape)
    reference = segmentation_scores(segments + 1, truth)
    reference_seconds = time.perf_counter() - start
    ours = {
        "voi_split": blockwise.voi_split,
        "voi_merge": blockwise.voi_merge,
        "voi": blockwise.voi,
        "adapted_rand_error": blockwise.arand,
    }
    differences = {k: abs(ours[k] - reference[k]) for k in reference}
    return {
        "shape": list(truth.shape),
        "blocks": blockwise.blocks,
        "evaluate": ours,
        "segmentation_scores": reference,
        "max_abs_difference": max(differences.values()),
        "equal_within_1e-6": max(differences.values()) <= TOLERANCE,
        "voxels_counted": blockwise.voxels,
        "voxels_counted_in_memory": int(np.count_nonzero(truth)),
        "evaluate_seconds": round(blockwise_seconds, 2),
        "segmentation_scores_seconds": round(reference_seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("bench_output/evaluate"))
    parser.add_argument("--shape", type=int, nargs=3, default=(120, 1024, 1024))
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--check-sections", type=int, default=20)
    args = parser.parse_args()
    workdir = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    shape = tuple(args.shape)
    start = time.perf_counter()
    container = generate(workdir, shape, args.cells, seed=0)
    generate_seconds = time.perf_counter() - start
    voxels = int(np.prod(shape))
    run = run_cli(container, args.threads)
    result = run.pop("result")
    figures: dict[str, Any] = {
        "benchmark": "evaluate",
        "shape": list(shape),
        "chunk_shape": list(CHUNK_SHAPE),
        "cells": args.cells,
        "voxels": voxels,
        "generate_seconds": round(generate_seconds, 1),
        "arrays_in_memory_bytes": 2 * voxels * np.dtype(np.uint64).itemsize,
        **run,
        "voxels_per_second": round(voxels / run["seconds"]),
        "baseline_rss_mb": baseline_rss_mb(),
        "blocks": result["blocks"],
        "voxels_counted": result["voxels"],
        "truth_objects": result["truth_objects"],
        "segments": result["segments"],
        "scores": {k: result[k] for k in ["voi_split", "voi_merge", "voi", "arand"]},
        "check": check(crop(container, workdir, args.check_sections)),
    }
    print_json(figures)


if __name__ == "__main__":
    main()
