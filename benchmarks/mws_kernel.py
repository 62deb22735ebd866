"""The mutex-watershed kernel (`volara.kernels.mws.agglom`, numba) against
`mwatershed.agglom` on one yardstick block: (40, 160, 160) voxels, the 9
offsets of the default neighborhood (9.2 x 10^6 edges), generated affinities
plus the yardstick's bias; float32 weights for the kernel, the float64 copy
mwatershed needs for mwatershed.

Each side runs in a fresh child process per repeat (alternating), so its
peak memory (VmHWM, reset before the call: both kernels hold the GIL, a
sampling thread would see nothing) is its own. The kernel's first call in a
process loads it from numba's on-disk cache; the compile cost is measured
separately with an empty cache directory (``NUMBA_CACHE_DIR``).

    python benchmarks/mws_kernel.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import interleaved, print_json, ratio

CHILD = r"""
import json, sys, time
import numpy as np, zarr
from volara.sample_data import DEFAULT_NEIGHBORHOOD

side, path = sys.argv[1], sys.argv[2]
affs = zarr.open_array(path, mode="r")[:]
bias = np.array([-0.4] * 3 + [-0.7] * 6, dtype=np.float32).reshape(-1, 1, 1, 1)
weights = (affs + bias).astype(np.float32)
offsets = [list(o) for o in DEFAULT_NEIGHBORHOOD]
if side == "mwatershed":
    import mwatershed
    weights = weights.astype(np.float64)
    run = lambda: mwatershed.agglom(weights, offsets)
else:
    from volara.kernels import mws
    start = time.perf_counter()
    mws.agglom(weights[:, :4, :8, :8].copy(), offsets)  # load (or compile)
    load = time.perf_counter() - start
    run = lambda: mws.agglom(weights, offsets)

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM
before = status("VmRSS")
start = time.perf_counter()
labels = run()
seconds = time.perf_counter() - start
out = {"seconds": seconds, "peak_extra_mb": status("VmHWM") - before,
       "clusters": int(len(np.unique(labels)))}
if side != "mwatershed":
    out["first_call_seconds"] = load
print(json.dumps(out))
"""


def run_child(side: str, affinities: Path, env: dict[str, str]) -> dict:
    output = subprocess.run(
        [sys.executable, "-c", CHILD, side, str(affinities)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("bench_output/mws_kernel"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    container = args.workdir / "block.zarr"
    if not (container / "affinities").exists():
        from volara.sample_data import generate_sample_data

        generate_sample_data(container, shape=(40, 160, 160))
    affinities = container / "affinities"

    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        cold = run_child("numba", affinities, {**os.environ, "NUMBA_CACHE_DIR": cache})
        compile_wall = time.perf_counter() - start
    runs: dict[str, list[dict]] = {"numba": [], "mwatershed": []}
    for side in interleaved(list(runs), args.repeats):
        runs[side].append(run_child(side, affinities, dict(os.environ)))
    best = {side: min(r, key=lambda x: x["seconds"]) for side, r in runs.items()}
    print_json(
        {
            "benchmark": "mws_kernel",
            "shape": [40, 160, 160],
            "edges": 9 * 40 * 160 * 160,
            "numba": best["numba"],
            "mwatershed": best["mwatershed"],
            "speedup": ratio(best["mwatershed"]["seconds"], best["numba"]["seconds"]),
            "all_seconds": {s: [r["seconds"] for r in runs[s]] for s in runs},
            "first_call_empty_cache_seconds": cold["first_call_seconds"],
            "child_wall_empty_cache_seconds": round(compile_wall, 2),
        }
    )


if __name__ == "__main__":
    main()
