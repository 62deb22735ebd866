"""Predict: a small 3D UNet on the CPU, block by block, against a plain torch
loop over the same blocks (the floor).

The network: a UNet with one downsampling (1 -> 12 -> 24 feature maps,
valid 3x3x3 convolutions, 3 output channels through a sigmoid, i.e.
affinities), saved with ``torch.jit.script`` + ``torch.jit.save``. Each block
reads (56, 112, 112) voxels and writes (40, 96, 96) voxels of uint8
affinities, over generated EM-like raw data (``generate_sample_data``,
uint8, read as ``value / 255``).

- ``floor``: one process (a fresh interpreter, torch imported before the
  clock starts), torch using every core: load the network, then for each
  block read its input region from the same zarr (zeros outside the
  volume), run the network under ``torch.inference_mode``, write the uint8
  output into a zarr prepared as Predict prepares its output (same chunks
  and codecs);
- ``predict_1_worker`` / ``predict_2_workers``: ``Predict.run_blockwise``
  with 1 and 2 worker processes, wall time from the call to its return
  (checks, output preparation, worker start including ``import torch``, the
  blocks, worker exit). The prefork host is started beforehand (once per
  driver; ``host_start_seconds``).

Voxels per second = output voxels written / wall seconds. ``steady`` rates
leave out the start: they count the blocks finished after each worker's
first block, over the time from the last worker's first block to the last
block (from the output chunks' modification times; every block writes one
chunk), the same for the floor with one worker; ``median_block`` rates
divide a block's voxels by the median time one block took (robust to a burst
of load from other programs, which a shared machine has).

Memory: the peak resident memory of the largest worker process (sampled from
``/proc`` every 0.1 s) and of the floor's process, next to the bound
"baseline + model + 3 blocks": the RSS of a process that only imported torch
(``baseline_torch_mb``; ``baseline_volara_torch_mb`` also imported
``volara.blockwise``, as the forked workers have), plus the parameters, plus 3
x (input block as float32 + output block as float32 + output as uint8). The
network's activations are not in that bound; the floor's process shows what
blocks and activations cost: ``floor_growth_mb``, its peak minus its RSS
with the network loaded and no block run yet (``floor_rss_before_blocks_mb``),
next to each worker's peak minus ``baseline_volara_torch_mb``
(``..._growth_mb``).

    python benchmarks/predict.py [--shape 80 288 288] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from common import TreeMemory, interleaved, print_json, ratio, rss_bytes, timed
from funlib.geometry import Coordinate
from yardstick import sample_data

VOXEL_SIZE = (8, 8, 8)
INPUT_SHAPE = Coordinate(56, 112, 112)
OUTPUT_SHAPE = Coordinate(40, 96, 96)
MIN_INPUT_SHAPE = Coordinate(18, 18, 18)
MIN_OUTPUT_SHAPE = Coordinate(2, 2, 2)
STEP_SHAPE = Coordinate(2, 2, 2)
CONTEXT = (INPUT_SHAPE - OUTPUT_SHAPE) // 2
NEIGHBORHOOD = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
OUT_CHANNELS = len(NEIGHBORHOOD)
SIDES = ["floor", "predict_1_worker", "predict_2_workers"]
WORKERS = {"predict_1_worker": 1, "predict_2_workers": 2}


# ---------------------------------------------------------------- network


def _convs(in_features: int, out_features: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Conv3d(in_features, out_features, 3),
        torch.nn.ReLU(inplace=True),
        torch.nn.Conv3d(out_features, out_features, 3),
        torch.nn.ReLU(inplace=True),
    )


def _crop(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The center of ``x`` with the spatial shape of ``like``."""
    z = (x.shape[2] - like.shape[2]) // 2
    y = (x.shape[3] - like.shape[3]) // 2
    w = (x.shape[4] - like.shape[4]) // 2
    return x[:, :, z : z + like.shape[2], y : y + like.shape[3], w : w + like.shape[4]]


class UNet(torch.nn.Module):
    """Two levels (one 2x downsampling), valid convolutions: the output is
    16 voxels smaller than the input along every axis."""

    def __init__(self, features: int = 12):
        super().__init__()
        self.down0 = _convs(1, features)
        self.pool = torch.nn.MaxPool3d(2)
        self.down1 = _convs(features, 2 * features)
        self.upsample = torch.nn.ConvTranspose3d(
            2 * features, 2 * features, 2, stride=2
        )
        self.up0 = _convs(3 * features, features)
        self.head = torch.nn.Conv3d(features, OUT_CHANNELS, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.down0(x)
        x = self.upsample(self.down1(self.pool(skip)))
        x = self.up0(torch.cat([_crop(skip, x), x], 1))
        return torch.sigmoid(self.head(x))


def save_network(path: Path) -> int:
    """Script and save the network (fixed seed); its parameter bytes."""
    torch.manual_seed(0)
    network = UNet().eval()
    torch.jit.save(torch.jit.script(network), str(path))
    return sum(p.numel() * p.element_size() for p in network.parameters())


# ---------------------------------------------------------------- data


def sample_raw(workdir: Path, shape: tuple[int, ...]) -> Path:
    """Generated raw data (uint8, chunked like the output blocks), written
    once per shape; the path of its ``raw`` array."""
    parameters = dict(
        shape=list(shape),
        voxel_size=list(VOXEL_SIZE),
        num_cells=max(int(np.prod(shape)) // 40_000, 2),
        neighborhood=NEIGHBORHOOD,
        noise=0.15,
        seed=0,
        raw=True,
        chunk_shape=list(OUTPUT_SHAPE),
    )
    return sample_data(workdir, **parameters) / "raw"


def make_task(raw: Path, model: Path, output: Path, workers: int, cache_workers):
    from volara.blockwise import Predict
    from volara.datasets import Affs, Raw
    from volara.models import TorchModel

    return Predict(
        checkpoint=TorchModel(
            save_path=model,
            in_channels=1,
            min_input_shape=MIN_INPUT_SHAPE,
            min_output_shape=MIN_OUTPUT_SHAPE,
            min_step_shape=STEP_SHAPE,
            out_channels=OUT_CHANNELS,
            out_range=(0, 1),
            pred_size_growth=INPUT_SHAPE - MIN_INPUT_SHAPE,
        ),
        in_data=Raw(store=raw, scale_shift=(1 / 255, 0)),
        out_data=[Affs(store=output, neighborhood=NEIGHBORHOOD)],
        num_workers=workers,
        num_cache_workers=cache_workers,
    )


def block_starts(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """First voxel of each block's written region: Predict's blocks, tiling
    the volume from its first voxel (the last ones cut at its end)."""
    grid = [-(-s // o) for s, o in zip(shape, OUTPUT_SHAPE, strict=True)]
    return [
        tuple(i * o for i, o in zip(index, OUTPUT_SHAPE, strict=True))
        for index in np.ndindex(*grid)
    ]


def chunk_times(array_path: Path) -> list[float]:
    """Modification times of the chunks of a zarr array, sorted."""
    metadata = {"zarr.json", ".zarray", ".zattrs", ".zgroup"}
    return sorted(
        p.stat().st_mtime
        for p in array_path.rglob("*")
        if p.is_file() and p.name not in metadata
    )


def median_rate(done: list[float], workers: int, voxels: int) -> float | None:
    """Voxels per second from the median time one block takes (between the
    ends of blocks ``i`` and ``i + workers``): robust to a burst of load from
    other programs."""
    if len(done) <= workers:
        return None
    times = np.array(done)
    # block i + workers starts about when block i ends: one worker's block
    median = float(np.median(times[workers:] - times[:-workers]))
    return voxels / len(done) * workers / median if median > 0 else None


def steady_rate(done: list[float], workers: int, voxels: int) -> float | None:
    """Voxels per second over the blocks finished after each worker's first
    block (all blocks the same size, or nearly)."""
    if len(done) <= workers:
        return None
    seconds = done[-1] - done[workers - 1]
    blocks = len(done) - workers
    return voxels * blocks / len(done) / seconds if seconds > 0 else None


# ---------------------------------------------------------------- floor


def floor_child(raw: str, model: str, output: str) -> None:
    """The floor, in this (fresh) process: prints its timings as JSON."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    start, cpu_start = time.perf_counter(), _own_cpu_seconds()
    start_wall_clock = time.time()
    network = torch.jit.load(model, map_location="cpu").eval()
    source = zarr.open_array(raw, mode="r")
    target = zarr.open_array(output, mode="r+")
    loaded = time.perf_counter()
    extent = np.array(source.shape)
    context, in_shape = np.array(CONTEXT), np.array(INPUT_SHAPE)
    done = []
    rss_before_blocks = rss_bytes(os.getpid())
    for write_begin in block_starts(source.shape):
        begin = np.array(write_begin) - context
        end = begin + in_shape
        low, high = np.maximum(begin, 0), np.minimum(end, extent)
        data = np.zeros((1, 1, *in_shape), dtype=np.float32)
        inside = tuple(map(slice, low - begin, high - begin))
        data[(0, 0, *inside)] = source[tuple(map(slice, low, high))].astype(
            np.float32
        ) * np.float32(1 / 255)
        with torch.inference_mode():
            result = network(torch.from_numpy(data))[0].numpy()
        stored = np.clip(result * 255, 0, 255).astype(np.uint8)
        write_end = np.minimum(np.array(write_begin) + np.array(OUTPUT_SHAPE), extent)
        crop = tuple(map(slice, write_end - np.array(write_begin)))
        target[(slice(None), *map(slice, write_begin, write_end))] = stored[
            (slice(None), *crop)
        ]
        done.append(time.time())
    end_time = time.perf_counter()
    print(
        json.dumps(
            {
                "seconds": end_time - start,
                "load_seconds": loaded - start,
                "cpu_seconds": _own_cpu_seconds() - cpu_start,
                "done": done,
                "start_wall_clock": start_wall_clock,
                "rss_before_blocks_bytes": rss_before_blocks,
            }
        ),
        flush=True,
    )


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_floor(raw: Path, model: Path, output: Path, workers_task) -> dict[str, Any]:
    """The floor in a child process; its figures and the child's peak RSS."""
    from volara.datasets import Affs

    Affs(store=output, neighborhood=NEIGHBORHOOD).drop()
    workers_task.init_out_array()  # Predict's own output preparation
    command = [sys.executable, __file__, "--floor-child"]
    command += [str(raw), str(model), str(output)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    with TreeMemory(process.pid) as memory:
        stdout, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the floor failed (exit {process.returncode})")
    figures = json.loads(stdout.strip().splitlines()[-1])
    figures["peak_rss_bytes"] = memory.peak_bytes
    return figures


# ---------------------------------------------------------------- Predict


def run_predict(task, output: Path, memory: TreeMemory) -> dict[str, Any]:
    task.drop(drop_outputs=True)
    figures: dict[str, Any] = {}
    start_wall_clock = time.time()
    with timed(figures, "run", memory):
        states = task.run_blockwise(multiprocessing=True, progress=False, summary=False)
    state = states[task.task_name]
    if state.failed_count or state.orphaned_count:
        raise RuntimeError(f"Predict failed: {state}")
    figures["done"] = chunk_times(output)
    figures["start_wall_clock"] = start_wall_clock
    return figures


# ---------------------------------------------------------------- memory


def import_rss_mb(modules: list[str]) -> float:
    """Resident memory of a fresh interpreter that imported ``modules``."""
    code = "".join(f"import {m}\n" for m in modules)
    code += "import os\nprint(int(open('/proc/self/statm').read().split()[1])"
    code += " * os.sysconf('SC_PAGE_SIZE'))"
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    return int(output.stdout.split()[-1]) / 2**20


def import_seconds(preloaded: list[str], module: str) -> float:
    """Seconds to import ``module`` in a fresh interpreter that already
    imported ``preloaded`` (what a forked worker pays)."""
    code = "".join(f"import {m}\n" for m in preloaded)
    code += f"import time\nstart = time.perf_counter()\nimport {module}\n"
    code += "print(time.perf_counter() - start)"
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    return float(output.stdout.split()[-1])


# ---------------------------------------------------------------- main


def summarize(
    side: str, runs: list[dict[str, Any]], voxels: int, workers: int
) -> dict[str, Any]:
    """The fastest run of one side, in voxels per second."""
    best = min(runs, key=lambda run: run["seconds"])
    done = best["done"]
    return {
        "seconds": round(best["seconds"], 3),
        "cpu_seconds": round(best["cpu_seconds"], 3),
        "voxels_per_second": round(voxels / best["seconds"]),
        "steady_voxels_per_second": _rounded(steady_rate(done, workers, voxels)),
        "median_block_voxels_per_second": _rounded(median_rate(done, workers, voxels)),
        "first_block_done_after_seconds": round(done[0] - best["start_wall_clock"], 3),
        "last_block_done_after_seconds": round(done[-1] - best["start_wall_clock"], 3),
        "all_runs_seconds": [round(run["seconds"], 3) for run in runs],
        "blocks_written": len(done),
    }


def _rounded(value: float | None) -> int | None:
    return None if value is None else round(value)


def compare_outputs(floor: Path, predict: Path) -> dict[str, Any]:
    a = np.asarray(zarr.open_array(str(floor), mode="r")[:]).astype(np.int16)
    b = np.asarray(zarr.open_array(str(predict), mode="r")[:]).astype(np.int16)
    difference = np.abs(a - b)
    return {
        "max_abs_difference": int(difference.max()),
        "fraction_differing": round(float(np.mean(difference > 0)), 6),
    }


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--floor-child":
        floor_child(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("bench_output/predict"))
    parser.add_argument("--shape", type=int, nargs=3, default=(80, 288, 288))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--cache-workers",
        type=int,
        default=None,
        help="Predict's num_cache_workers (default: unset, one thread)",
    )
    args = parser.parse_args()
    workdir = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    from volara import prefork
    from volara.blockwise import Predict
    from volara.logging import set_log_basedir

    set_log_basedir(workdir / "logs")
    shape = tuple(args.shape)
    raw = sample_raw(workdir, shape)
    model = workdir / "unet.pt"
    parameter_bytes = save_network(model)
    outputs = {side: workdir / "outputs.zarr" / side for side in SIDES}
    tasks = {
        side: make_task(
            raw, model, outputs[side], WORKERS.get(side, 1), args.cache_workers
        )
        for side in SIDES
    }
    voxels = int(np.prod(shape))
    load_before = os.getloadavg()[0]

    start = time.perf_counter()
    prefork.host_address(Predict.worker_imports)  # as a run with Predict starts it
    host_start = time.perf_counter() - start

    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    worker_peaks: dict[str, list[int]] = {side: [] for side in WORKERS}
    with TreeMemory() as memory:
        for side in interleaved(SIDES, args.repeats):
            if side == "floor":
                runs[side].append(run_floor(raw, model, outputs[side], tasks[side]))
                continue
            figures = run_predict(tasks[side], outputs[side], memory)
            runs[side].append(
                {
                    "seconds": figures["run"],
                    "cpu_seconds": figures["run_cpu"],
                    "done": figures["done"],
                    "start_wall_clock": figures["start_wall_clock"],
                }
            )
            worker_peaks[side].append(memory.peak_child_bytes)

    results = {
        side: summarize(side, runs[side], voxels, WORKERS.get(side, 1))
        for side in SIDES
    }
    floor = results["floor"]
    floor["load_seconds"] = round(min(r["load_seconds"] for r in runs["floor"]), 3)
    for side in WORKERS:
        result = results[side]
        result["ratio_to_floor"] = ratio(
            result["voxels_per_second"], floor["voxels_per_second"]
        )
        for rate in ("steady", "median_block"):
            mine, floors = (r[f"{rate}_voxels_per_second"] for r in (result, floor))
            result[f"{rate}_ratio_to_floor"] = (
                None if mine is None else ratio(mine, floors or 0)
            )
        result["cpu_ratio_to_floor"] = ratio(
            result["cpu_seconds"], floor["cpu_seconds"]
        )
        result["peak_worker_rss_mb"] = round(max(worker_peaks[side]) / 2**20, 1)

    in_bytes = int(np.prod(INPUT_SHAPE)) * 4
    out_voxels = OUT_CHANNELS * int(np.prod(OUTPUT_SHAPE))
    blocks_bytes = 3 * (in_bytes + out_voxels * 4 + out_voxels)
    baseline = import_rss_mb(["torch"])
    bound = baseline + (parameter_bytes + blocks_bytes) / 2**20
    memory_figures = {
        "baseline_torch_mb": round(baseline, 1),
        "baseline_volara_torch_mb": round(
            import_rss_mb(["volara.blockwise", "torch"]), 1
        ),
        "parameters_mb": round(parameter_bytes / 2**20, 2),
        "three_blocks_mb": round(blocks_bytes / 2**20, 1),
        "bound_mb": round(bound, 1),
        "floor_peak_rss_mb": round(
            min(r["peak_rss_bytes"] for r in runs["floor"]) / 2**20, 1
        ),
        "floor_rss_before_blocks_mb": round(
            min(r["rss_before_blocks_bytes"] for r in runs["floor"]) / 2**20, 1
        ),
    }
    memory_figures["floor_growth_mb"] = round(
        memory_figures["floor_peak_rss_mb"]
        - memory_figures["floor_rss_before_blocks_mb"],
        1,
    )
    for side in WORKERS:
        memory_figures[f"{side}_growth_mb"] = round(
            results[side]["peak_worker_rss_mb"]
            - memory_figures["baseline_volara_torch_mb"],
            1,
        )
        memory_figures[f"{side}_peak_worker_rss_mb"] = results[side][
            "peak_worker_rss_mb"
        ]
        memory_figures[f"{side}_over_bound"] = ratio(
            results[side]["peak_worker_rss_mb"], bound
        )

    print_json(
        {
            "benchmark": "predict",
            "shape": list(shape),
            "voxel_size": list(VOXEL_SIZE),
            "input_block": list(INPUT_SHAPE),
            "output_block": list(OUTPUT_SHAPE),
            "blocks": len(block_starts(shape)),
            "output_voxels": voxels,
            "cores": len(os.sched_getaffinity(0)),
            "torch": torch.__version__,
            "cache_workers": args.cache_workers,
            # other programs on the machine: 2 cores, so above ~2 means waiting
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "host_start_seconds": round(host_start, 3),
            "worker_import_torch_seconds": round(
                import_seconds(["volara.blockwise"], "torch"), 3
            ),
            **results,
            "memory": memory_figures,
            "target_ratio_1_worker": 0.8,
            "outputs_vs_floor": {
                side: compare_outputs(outputs["floor"], outputs[side])
                for side in WORKERS
            },
        }
    )


if __name__ == "__main__":
    main()
