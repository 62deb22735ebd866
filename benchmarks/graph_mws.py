"""GraphMWS on a large region graph: 10^6 nodes and 5 x 10^6 edges in
SQLite (targets: under 60 s and under 4 GB for the whole process tree).

The graph is a lattice of fragments (100 x 100 x 100 nodes, world positions
on a (40, 4, 4) grid) with edges to face neighbors and to a few diagonal and
random farther nodes, each with a random ``adj_weight`` and ``lr_weight``.
It is written once straight into the tables volara's SQLite graph uses and
reused by later runs.

    python benchmarks/graph_mws.py [--nodes-per-axis 100 --edges 5000000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from common import print_json, ratio, run_driver

from volara.dbs import SQLite

HERE = Path(__file__).resolve().parent
SPACING = np.array([40, 4, 4])
INSERT_ROWS = 200_000


def lattice_edges(side: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct ``(u, v)`` node-index pairs, ``u < v``: lattice
    neighbors first, then random pairs up to 50 nodes apart in index."""
    index = np.arange(side**3).reshape(side, side, side)
    pairs = []
    for offset in [(0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 1, 1), (1, 1, 0)]:
        end = tuple(side - o for o in offset)
        u = index[: end[0], : end[1], : end[2]]
        v = index[offset[0] :, offset[1] :, offset[2] :]
        pairs.append(np.stack([u.ravel(), v.ravel()], axis=1))
    edges = np.concatenate(pairs)
    while edges.shape[0] < count:
        missing = count - edges.shape[0]
        u = rng.integers(0, side**3 - 50, missing)
        extra = np.stack([u, u + rng.integers(2, 50, missing)], axis=1)
        edges = np.unique(np.concatenate([edges, extra]), axis=0)
    edges = edges[rng.permutation(edges.shape[0])[:count]]
    # sorted rows go into the (u, v) primary key's B-tree in order: fast
    return edges[np.lexsort((edges[:, 1], edges[:, 0]))]


def write_graph(db: SQLite, side: int, num_edges: int, seed: int) -> None:
    """Fill ``db`` with the lattice graph (ids start at 1)."""
    rng = np.random.default_rng(seed)
    db.drop()
    db.init()
    graph = db.open("r+")
    con = graph.con
    con.execute("PRAGMA synchronous=OFF")
    num_nodes = side**3
    coordinates = (
        np.stack(np.unravel_index(np.arange(num_nodes), (side,) * 3), axis=1) * SPACING
        + SPACING / 2
    )
    rows = zip(
        range(1, num_nodes + 1),
        *(coordinates[:, axis].tolist() for axis in range(3)),
        [100] * num_nodes,
        [False] * num_nodes,
        strict=True,
    )
    con.executemany(
        f"INSERT INTO {graph.nodes_table_name} "
        "(id, position_0, position_1, position_2, size, filtered) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    edges = lattice_edges(side, num_edges, rng) + 1
    weights = rng.random((edges.shape[0], 2))
    for start in range(0, edges.shape[0], INSERT_ROWS):
        chunk = slice(start, start + INSERT_ROWS)
        con.executemany(
            f"INSERT INTO {graph.edges_table_name} "
            "(u, v, distance, adj_weight, lr_weight) VALUES (?, ?, ?, ?, ?)",
            zip(
                edges[chunk, 0].tolist(),
                edges[chunk, 1].tolist(),
                [1.0] * len(edges[chunk]),
                weights[chunk, 0].tolist(),
                weights[chunk, 1].tolist(),
                strict=True,
            ),
        )
    con.commit()
    graph.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("bench_output/graph_mws"))
    parser.add_argument("--nodes-per-axis", type=int, default=100)
    parser.add_argument("--edges", type=int, default=5_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    workdir = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    db = SQLite(
        path=workdir / "graph.sqlite",
        edge_attrs={"adj_weight": "float", "lr_weight": "float"},
    )
    marker = workdir / "graph-parameters.json"
    wanted = json.dumps([args.nodes_per_axis, args.edges, args.seed])
    generate_seconds = None
    if not (marker.exists() and marker.read_text() == wanted and db.exists()):
        start = time.perf_counter()
        write_graph(db, args.nodes_per_axis, args.edges, args.seed)
        generate_seconds = round(time.perf_counter() - start, 1)
        marker.write_text(wanted)
    extent = (SPACING * args.nodes_per_axis).tolist()
    command = [sys.executable, str(HERE / "drivers" / "graph_mws_run.py")]
    command += ["--db", str(db.path), "--lut", str(workdir / "lut.npz")]
    command += ["--roi", "0", "0", "0", *map(str, extent)]
    figures = run_driver(command, workdir / "graph_mws_run.log")
    lut = np.load(workdir / "lut.npz")["fragment_segment_lut"]
    print_json(
        {
            "benchmark": "graph_mws",
            "nodes": args.nodes_per_axis**3,
            "edges": args.edges,
            "graph_generation_seconds": generate_seconds,
            **figures,
            "segments": int(np.unique(lut[1]).size),
            "seconds_over_target_60": ratio(figures["seconds"], 60),
            "memory_over_target_4gb": ratio(figures["peak_rss_mb"], 4096),
        }
    )


if __name__ == "__main__":
    main()
