"""Hierarchical GraphMWS on a large region graph in PostgreSQL, beside the
in-memory GraphMWS: wall and CPU seconds per stage, peak memory per worker
and of the process tree (``graph_mws_levels.py scale``).

The graph is a cubic lattice of fragments (``side^3`` nodes, world
positions on a (40, 4, 4) grid, ids from 1), with edges to 5 neighbours
(the 3 face neighbours and 2 diagonals: about 5 edges per node). The truth
behind it is the Voronoi cells of one seed per 1,000 fragments;
``adj_weight`` and ``lr_weight`` are 0.8 inside a cell and 0.2 across, plus
gaussian noise (sigma 0.15, each drawn on its own), clipped to [0, 1],
weighed as the demo does (``(1, -0.4)`` and ``(1, -0.7)``). It is written
with ``COPY ... FROM STDIN (FORMAT binary)`` straight into the tables
volara's `PostgreSQL` creates (positions as ``REAL[]``), with the primary
keys and the position index dropped during the copy and built after it,
then ``ANALYZE``; kept and reused by later runs with the same parameters.

Each GraphMWS runs in a child process (``drivers/graph_mws_levels_run.py``)
that samples ``/proc`` of its process tree every 0.1 s (`common.TreeMemory`:
the summed RSS of the driver, the prefork host and the workers, and the
largest single worker). The hierarchical run goes stage by stage (each a
daisy run of its own, 2 workers) so that each has its own time and peak.
The in-memory run is killed when its tree passes ``--memory-cap-gb`` or
``--time-cap-minutes``. The PostgreSQL server's own memory is not counted.

    python benchmarks/graph_mws_levels.py scale --side 100
    python benchmarks/graph_mws_levels.py scale --side 215 --skip-memory
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import print_json, tree_rss_bytes
from scipy.spatial import cKDTree

from volara.dbs import PostgreSQL

HERE = Path(__file__).resolve().parent
SPACING = np.array([40, 4, 4])
OFFSETS = [(0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 1, 1), (1, 1, 0)]
FRAGMENTS_PER_OBJECT = 1000
NOISE = 0.15
EDGE_ATTRS = {"adj_weight": "float", "lr_weight": "float"}
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
COPY_TRAILER = b"\xff\xff"
FLOAT4_OID = 700

NODE_ROW = np.dtype(
    [("fields", ">i2"), ("id_len", ">i4"), ("id", ">i8"), ("pos_len", ">i4")]
    + [(f"array_{k}", ">i4") for k in ("ndim", "nulls", "oid", "dim", "lower")]
    + [(f"p{d}{k}", t) for d in range(3) for k, t in (("_len", ">i4"), ("", ">f4"))]
    + [("size_len", ">i4"), ("size", ">i8"), ("filtered_len", ">i4")]
    + [("filtered", "u1")]
)
EDGE_ROW = np.dtype(
    [("fields", ">i2"), ("u_len", ">i4"), ("u", ">i8"), ("v_len", ">i4")]
    + [("v", ">i8")]
    + [
        (f"{n}{k}", t)
        for n in ("d", "a", "l")
        for k, t in (("_len", ">i4"), ("", ">f4"))
    ]
)


def scale_db(side: int) -> PostgreSQL:
    return PostgreSQL(
        host="127.0.0.1", name=f"volara_bench_levels_{side}", edge_attrs=EDGE_ATTRS
    )


def _copy(cursor, table: str, columns: str, rows: np.ndarray) -> None:
    data = io.BytesIO()
    data.write(COPY_HEADER)
    data.write(rows.tobytes())
    data.write(COPY_TRAILER)
    data.seek(0)
    cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN (FORMAT binary)", data)


def _node_rows(side: int, start: int, stop: int) -> np.ndarray:
    index = np.arange(start, stop)
    positions = np.stack(np.unravel_index(index, (side,) * 3), axis=1) * SPACING
    positions = positions + SPACING / 2
    rows = np.zeros(index.size, NODE_ROW)
    rows["fields"], rows["id_len"], rows["id"], rows["pos_len"] = 4, 8, index + 1, 44
    rows["array_ndim"], rows["array_oid"], rows["array_dim"] = 1, FLOAT4_OID, 3
    rows["array_lower"] = 1
    for d in range(3):
        rows[f"p{d}_len"], rows[f"p{d}"] = 4, positions[:, d]
    rows["size_len"], rows["size"], rows["filtered_len"] = 8, 100, 1
    return rows


def _truth(side: int, rng: np.random.Generator) -> np.ndarray:
    """The Voronoi cell of every node (flat lattice order)."""
    seeds = rng.uniform(0, side, (max(side**3 // FRAGMENTS_PER_OBJECT, 1), 3))
    tree = cKDTree(seeds)
    truth = np.empty(side**3, dtype=np.int32)
    plane = side * side
    for z in range(side):
        grid = np.stack(np.unravel_index(np.arange(plane), (side, side)), axis=1)
        points = np.concatenate([np.full((plane, 1), z), grid], axis=1) + 0.5
        truth[z * plane : (z + 1) * plane] = tree.query(points)[1]
    return truth


def _edge_rows(side: int, offset: tuple, truth: np.ndarray, rng) -> np.ndarray:
    index = np.arange(side**3).reshape((side,) * 3)
    end = tuple(side - o for o in offset)
    u = index[: end[0], : end[1], : end[2]].ravel()
    v = index[offset[0] :, offset[1] :, offset[2] :].ravel()
    same = truth[u] == truth[v]
    rows = np.zeros(u.size, EDGE_ROW)
    rows["fields"], rows["u_len"], rows["u"] = 5, 8, u + 1
    rows["v_len"], rows["v"] = 8, v + 1
    rows["d_len"], rows["d"] = 4, float(np.linalg.norm(np.array(offset) * SPACING))
    for name in ("a", "l"):
        noisy = np.where(same, 0.8, 0.2) + rng.normal(0, NOISE, u.size)
        rows[f"{name}_len"], rows[name] = 4, np.clip(noisy, 0, 1)
    return rows


def write_graph(db: PostgreSQL, side: int, seed: int) -> dict[str, float]:
    """Create ``db`` with volara's schema and fill it; seconds per step."""
    import psycopg2

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    db.drop_database()
    db.init()
    rng = np.random.default_rng(seed)
    truth = _truth(side, rng)
    seconds["truth"] = time.perf_counter() - start
    connection = psycopg2.connect(host=db.host, dbname=db.name)
    cursor = connection.cursor()
    cursor.execute("SET synchronous_commit = off")
    cursor.execute("SET maintenance_work_mem = '2GB'")
    cursor.execute("ALTER TABLE nodes DROP CONSTRAINT nodes_pkey")
    cursor.execute("DROP INDEX pos_index")
    cursor.execute("ALTER TABLE edges DROP CONSTRAINT edges_pkey")
    step = time.perf_counter()
    for first in range(0, side**3, 2_000_000):
        rows = _node_rows(side, first, min(first + 2_000_000, side**3))
        _copy(cursor, "nodes", "id, position, size, filtered", rows)
    seconds["copy_nodes"] = time.perf_counter() - step
    step = time.perf_counter()
    for offset in OFFSETS:
        rows = _edge_rows(side, offset, truth, rng)
        for first in range(0, rows.size, 5_000_000):
            _copy(
                cursor,
                "edges",
                "u, v, distance, adj_weight, lr_weight",
                rows[first : first + 5_000_000],
            )
        del rows
    seconds["copy_edges"] = time.perf_counter() - step
    step = time.perf_counter()
    cursor.execute("ALTER TABLE nodes ADD PRIMARY KEY (id)")
    cursor.execute("CREATE INDEX pos_index ON nodes (position)")
    cursor.execute("ALTER TABLE edges ADD PRIMARY KEY (u, v)")
    connection.commit()
    seconds["indexes"] = time.perf_counter() - step
    step = time.perf_counter()
    connection.autocommit = True
    cursor.execute("VACUUM ANALYZE nodes")
    cursor.execute("VACUUM ANALYZE edges")
    seconds["analyze"] = time.perf_counter() - step
    connection.close()
    seconds["total"] = time.perf_counter() - start
    return {k: round(v, 1) for k, v in seconds.items()}


def run_capped(
    command: list[str], log_file: Path, memory_cap: float, time_cap: float
) -> dict[str, Any]:
    """Run a driver; kill its process group past ``memory_cap`` bytes (tree
    RSS, sampled every 0.5 s) or ``time_cap`` seconds. Its JSON line, or
    what stopped it."""
    start, peak = time.perf_counter(), 0
    with open(log_file, "w") as log:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
        )
        stopped = None
        while process.poll() is None:
            peak = max(peak, tree_rss_bytes(process.pid)[0])
            elapsed = time.perf_counter() - start
            if peak > memory_cap or elapsed > time_cap:
                stopped = "memory cap" if peak > memory_cap else "time cap"
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                break
            time.sleep(0.5)
        output = process.stdout.read() if process.stdout else ""
    if stopped or process.returncode != 0:
        return {
            "stopped": stopped or f"exit {process.returncode} (see {log_file})",
            "after_seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb_sampled": round(peak / 2**20, 1),
        }
    lines = [line for line in output.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def main(argv: list[str], workdir: Path) -> None:
    parser = argparse.ArgumentParser(prog="graph_mws_levels.py scale")
    parser.add_argument("--side", type=int, default=100, help="nodes per axis")
    parser.add_argument(
        "--block-nodes", type=int, default=46, help="first-level block side, in nodes"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sample-blocks",
        type=int,
        default=0,
        help="instead of the whole hierarchical run, time the first level's "
        "watershed on this many middle blocks, one after the other",
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-levels", action="store_true")
    parser.add_argument("--memory-cap-gb", type=float, default=18.0)
    parser.add_argument("--time-cap-minutes", type=float, default=30.0)
    parser.add_argument("--drop", action="store_true", help="drop the databases after")
    args = parser.parse_args(argv)
    workdir.mkdir(parents=True, exist_ok=True)
    db = scale_db(args.side)
    marker = workdir / f"graph-{args.side}.json"
    wanted = json.dumps([args.side, args.seed, NOISE, OFFSETS])
    generation = None
    if not (marker.exists() and marker.read_text() == wanted and db.exists()):
        generation = write_graph(db, args.side, args.seed)
        marker.write_text(wanted)
    extent = (SPACING * args.side).tolist()
    command = [sys.executable, str(HERE / "drivers" / "graph_mws_levels_run.py")]
    command += ["--db-name", db.name, "--roi", *map(str, extent)]
    figures: dict[str, Any] = {
        "benchmark": "graph_mws_levels.scale",
        "nodes": args.side**3,
        "edges": sum(
            int(np.prod([args.side - o for o in offset])) for offset in OFFSETS
        ),
        "generation_seconds": generation,
    }
    if not args.skip_levels:
        block = (SPACING * args.block_nodes).tolist()
        figures["levels"] = run_capped(
            command
            + ["--lut", str(workdir / f"levels-{args.side}.npz")]
            + ["--block-size", *map(str, block), "--workers", str(args.workers)]
            + ["--sample-blocks", str(args.sample_blocks)],
            workdir / f"levels-{args.side}.log",
            memory_cap=args.memory_cap_gb * 2**30,
            time_cap=args.time_cap_minutes * 60,
        )
    if not args.skip_memory:
        figures["memory"] = run_capped(
            command + ["--lut", str(workdir / f"memory-{args.side}.npz")],
            workdir / f"memory-{args.side}.log",
            memory_cap=args.memory_cap_gb * 2**30,
            time_cap=args.time_cap_minutes * 60,
        )
    if not (args.skip_levels or args.skip_memory or args.sample_blocks):
        figures["levels_vs_memory"] = _compare(workdir, args.side)
    if args.drop:
        db.drop_database()
        for level in range(1, 8):
            db.sibling(f"levels_{args.side}_level{level}").drop_database()
    (workdir / f"scale-{args.side}.json").write_text(json.dumps(figures, indent=1))
    print_json(figures)


def _compare(workdir: Path, side: int) -> dict[str, Any] | None:
    """Segment counts of both runs and the VOI between them (fragments
    weighted equally)."""
    from graph_mws_levels import voi

    tables = [workdir / f"{name}-{side}.npz" for name in ("levels", "memory")]
    if not all(path.exists() for path in tables):
        return None
    levels, memory = (np.load(path)["fragment_segment_lut"] for path in tables)
    levels = levels[:, np.argsort(levels[0])]
    memory = memory[:, np.argsort(memory[0])]
    if not np.array_equal(levels[0], memory[0]):
        return {"error": "the tables list different fragments"}
    return {
        "segments_levels": int(np.unique(levels[1]).size),
        "segments_memory": int(np.unique(memory[1]).size),
        "voi": voi(levels[1], memory[1], np.ones(levels.shape[1], dtype=np.int64)),
    }
