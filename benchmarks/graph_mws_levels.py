"""Hierarchical GraphMWS (``GraphMWS(block_size=...)``, levels of blocks)
against the in-memory GraphMWS: segmentation quality, and time and memory
on large graphs.

``quality``: on region graphs with a ground truth, the in-memory GraphMWS
and the hierarchical one with 2 and 3 levels, ``edge_score`` "strongest"
and "mean", context 0 / half a block / a whole block. Per run: VOI
(split + merge) against the truth and against the in-memory result, and the
segment count. Graphs (several seeds, three noise levels each):

- ``lattice``: fragments on a 24^3 lattice (positions 4 apart), the truth
  the Voronoi cells of 40 random seeds; edges to the 6 face and in-plane
  diagonal neighbours with affinity 0.8 (same cell) or 0.2 (different
  cells) plus gaussian noise, clipped to [0, 1]; weight ``aff - 0.5``.
- ``columns``: an anisotropic lattice, 12 x 40 x 40 fragments 40 x 8 x 8
  apart, the truth neurite-like columns (2-D Voronoi cells of 40 seeds that
  drift across the sections); edges along every axis and the in-plane
  diagonals, same affinity model.
- ``neurites``: the real thing on a small volume: `generate_sample_data`
  (neurites 8 voxels across with 1-voxel membranes, blur 0.5, the data of
  tests/test_accuracy_ordering.py on 24 x 128 x 128 voxels), ExtractFrags +
  AffAgglom as in `volara.demo` (blocks of 12 x 64 x 64 voxels, context
  4 x 16 x 16); VOI on voxels (the fragments' overlap with the truth).
  First-level blocks are kept at least 12 sections deep (`NEURITE_MIN_BLOCK`).

``scale``: see `graph_mws_scale.py`.

    python benchmarks/graph_mws_levels.py quality [--seeds 3] [--shapes lattice columns neurites]
    python benchmarks/graph_mws_levels.py scale --side 215

Prints one JSON object (every row) and, on stderr, a table per graph shape.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from common import print_json
from funlib.geometry import Coordinate, Roi

from volara.blockwise import AffAgglom, ExtractFrags, GraphMWS, Pipeline
from volara.datasets import Labels
from volara.dbs import SQLite
from volara.kernels.metrics import Contingency, block_contingency, contingency_scores
from volara.logging import set_log_basedir
from volara.lut import LUT
from volara.sample_data import generate_sample_data

NOISE = {"lattice": [0.1, 0.15, 0.2, 0.3], "columns": [0.1, 0.15, 0.2, 0.3]}
NEURITE_NOISE = [0.15, 0.25, 0.35]
NEURITES = dict(
    shape=(24, 128, 128),
    objects="neurites",
    num_cells=267,
    membrane_width=1,
    blur=0.5,
)
"""tests/test_accuracy_ordering.py's hard data (150 neurites in 96 x 96
pixels, so 267 in 128 x 128) on a volume 1.8x larger in y and x and 1.2x in
z."""
NEURITE_BLOCKS = dict(block_size=(12, 64, 64), context=(4, 16, 16))
NEURITE_MIN_BLOCK = (480, 0, 0)
"""First-level blocks at least as deep as ExtractFrags' blocks (12 sections
of 40): a fragment may span its whole block, so the centres of two touching
fragments may lie further apart than a thinner first-level block, which
FragSegEdgeAgglom refuses."""
DEMO_BIAS = {"adj_weight": -0.4, "lr_weight": -0.7}
CONTEXTS = ["0", "half", "full"]
TARGET = 0.02
"""Issue 18: hierarchical within VOI 0.02 of the in-memory GraphMWS."""
EDGE_SCORES = ["strongest", "mean"]


class Graph(NamedTuple):
    """A region graph in SQLite with what scoring needs."""

    db: SQLite
    roi: Roi
    weights: dict[str, tuple[float, float]]
    truth: Contingency
    """(fragment, truth object, voxels) rows; ``segments`` holds fragments."""
    fragments: np.ndarray
    """Every fragment id, sorted."""
    sizes: np.ndarray
    """Voxels of each fragment (weights of the comparison between two
    segmentations)."""
    min_block: tuple[int, ...] = (0, 0, 0)
    """Smallest first-level block, world units."""


def write_lattice_graph(
    db: SQLite, positions: np.ndarray, u: np.ndarray, v: np.ndarray, aff: np.ndarray
) -> None:
    """Nodes 1..n at ``positions`` (size 1), edges ``(u, v)`` (0-based
    indices) with ``aff``, straight into volara's SQLite tables."""
    db.drop()
    db.init()
    graph = db.open("r+")
    con = graph.con  # type: ignore[attr-defined]
    con.executemany(
        f"INSERT INTO {graph.nodes_table_name} "
        "(id, position_0, position_1, position_2, size, filtered) "
        "VALUES (?, ?, ?, ?, ?, 0)",
        zip(
            range(1, len(positions) + 1),
            *(positions[:, axis].tolist() for axis in range(3)),
            [1] * len(positions),
            strict=True,
        ),
    )
    con.executemany(
        f"INSERT INTO {graph.edges_table_name} (u, v, aff) VALUES (?, ?, ?)",
        zip((u + 1).tolist(), (v + 1).tolist(), aff.tolist(), strict=True),
    )
    con.commit()
    graph.close()  # type: ignore[attr-defined]


def lattice_pairs(shape: tuple[int, ...], offsets: list) -> tuple:
    """``(u, v)`` flat indices of every lattice node and its neighbour at
    each offset (offsets may be negative)."""
    index = np.arange(int(np.prod(shape))).reshape(shape)
    us, vs = [], []
    for offset in offsets:
        at_u = tuple(
            slice(max(-o, 0), s - max(o, 0)) for s, o in zip(shape, offset, strict=True)
        )
        at_v = tuple(
            slice(max(o, 0), s - max(-o, 0)) for s, o in zip(shape, offset, strict=True)
        )
        us.append(index[at_u].ravel())
        vs.append(index[at_v].ravel())
    return np.concatenate(us), np.concatenate(vs)


def synthetic_graph(path: Path, shape_name: str, noise: float, seed: int) -> Graph:
    """A lattice of fragments with noisy affinities and its truth."""
    rng = np.random.default_rng(seed)
    if shape_name == "lattice":
        shape, spacing = (24, 24, 24), np.array([4, 4, 4])
        offsets = [(0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 1, 1), (1, 1, 0), (1, 0, 1)]
    else:
        shape, spacing = (12, 40, 40), np.array([40, 8, 8])
        offsets = [(0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 1, 1), (0, 1, -1)]
    grid = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1)
    positions = (grid.reshape(-1, 3) + 0.5) * spacing
    extent = np.array(shape) * spacing
    if shape_name == "lattice":
        seeds = rng.uniform(0, extent, (40, 3))
        gaps = positions[:, None, :] - seeds[None]
    else:
        # 2-D seeds drifting linearly through the sections: columns
        start, drift = rng.uniform(0, extent[1:], (40, 2)), rng.normal(0, 40, (40, 2))
        along = positions[:, :1, None] / extent[0]  # (n, 1, 1)
        gaps = positions[:, None, 1:] - (start[None] + along * drift[None])
    truth = np.argmin((gaps**2).sum(-1), axis=1) + 1
    u, v = lattice_pairs(shape, offsets)
    aff = np.where(truth[u] == truth[v], 0.8, 0.2) + rng.normal(0, noise, u.size)
    db = SQLite(path=path / "graph.sqlite", edge_attrs={"aff": "float"})
    write_lattice_graph(db, positions, u, v, np.clip(aff, 0.0, 1.0))
    ids = np.arange(1, len(positions) + 1, dtype=np.uint64)
    ones = np.ones(ids.size, dtype=np.int64)
    return Graph(
        db=db,
        roi=Roi((0, 0, 0), tuple(int(e) for e in extent)),
        weights={"aff": (1.0, -0.5)},
        truth=Contingency(ids, truth.astype(np.uint64), ones, np.zeros((ids.size, 0))),
        fragments=ids,
        sizes=ones,
    )


def neurite_graph(path: Path, noise: float, seed: int) -> Graph:
    """Sample data, ExtractFrags and AffAgglom as `volara.demo` runs them."""
    container = path / "sample.zarr"
    data = generate_sample_data(container, noise=noise, seed=seed, **NEURITES)
    affs = data.affinities
    db = SQLite(
        path=path / "graph.sqlite",
        edge_attrs={"adj_weight": "float", "lr_weight": "float"},
    )
    neighborhood = affs.neighborhood or []
    short = [o for o in neighborhood if max(abs(x) for x in o) == 1]
    long = [o for o in neighborhood if max(abs(x) for x in o) > 1]
    fragments = Labels(store=container / "fragments")
    shared: dict[str, Any] = dict(
        db=db,
        affs_data=affs,
        frags_data=fragments,
        num_workers=2,
        **{k: Coordinate(v) for k, v in NEURITE_BLOCKS.items()},
    )
    bias = [
        DEMO_BIAS["adj_weight" if o in short else "lr_weight"] for o in neighborhood
    ]
    pipeline = ExtractFrags(bias=bias, **shared) + AffAgglom(
        scores={"adj_weight": short, "lr_weight": long}, **shared
    )
    pipeline.drop()
    pipeline.run_blockwise(progress=False, summary=False)
    frags = np.asarray(fragments.array("r")[:])
    labels = np.asarray(data.labels.array("r")[:])
    truth = block_contingency(frags, labels)
    ids, sizes = np.unique(frags[frags != 0], return_counts=True)
    return Graph(
        db=db,
        roi=affs.array("r").roi,
        weights={name: (1.0, bias) for name, bias in DEMO_BIAS.items()},
        truth=truth,
        fragments=ids.astype(np.uint64),
        sizes=sizes,
        min_block=NEURITE_MIN_BLOCK,
    )


def segments_of(table: np.ndarray, fragments: np.ndarray) -> np.ndarray:
    """The segment of each fragment by a ``(2, n)`` look-up table (a fragment
    not in it is a segment of its own)."""
    order = np.argsort(table[0])
    keys, values = table[0][order], table[1][order]
    at = np.minimum(np.searchsorted(keys, fragments), keys.size - 1)
    return np.where(keys[at] == fragments, values[at], fragments)


def voi(segments: np.ndarray, reference: np.ndarray, counts: np.ndarray) -> dict:
    """VOI split / merge (bits) of ``segments`` against ``reference``, items
    weighted by ``counts`` (split: ``segments`` cuts a reference object)."""
    pairs, inverse = np.unique(
        np.stack([segments, reference], axis=1), axis=0, return_inverse=True
    )
    summed = np.bincount(inverse.ravel(), weights=counts).astype(np.int64)
    table = Contingency(pairs[:, 0], pairs[:, 1], summed, np.zeros((len(pairs), 0)))
    scores = contingency_scores(table)
    return {k: round(scores[k], 4) for k in ("voi_split", "voi_merge", "voi")}


def level_runs(roi: Roi, min_block: tuple[int, ...]) -> list[dict[str, Any]]:
    """The hierarchical configurations: first-level blocks of half and a
    quarter of ``roi`` (2 and 3 levels; not below ``min_block``), each edge
    score and context."""
    runs = []
    for levels in (2, 3):
        block = Coordinate(
            max(-(-int(s) // 2 ** (levels - 1)), m)
            for s, m in zip(roi.shape, min_block, strict=True)
        )
        for score in EDGE_SCORES:
            for context in CONTEXTS:
                runs.append(
                    dict(
                        levels=levels,
                        edge_score=score,
                        context=context,
                        block_size=block,
                    )
                )
    return runs


def run_graph_mws(
    graph: Graph, lut: LUT, levels: int | None = None, **options: Any
) -> tuple[np.ndarray, float]:
    """Run GraphMWS in this process; its table and wall seconds."""
    task = GraphMWS(
        db=graph.db, lut=lut, roi=graph.roi, weights=graph.weights, **options
    )
    task.drop()
    start = time.perf_counter()
    Pipeline(task).run_blockwise(multiprocessing=False, progress=False, summary=False)
    seconds = time.perf_counter() - start
    table = lut.load()
    if levels is not None:
        if len(task.level_block_sizes()) != levels:
            raise RuntimeError(f"{options}: not {levels} levels")
        task.drop()  # the level databases and tables
    return table, seconds


def score_graph(graph: Graph, workdir: Path) -> list[dict[str, Any]]:
    """One row for the in-memory GraphMWS and one per hierarchical run."""
    truth_of = graph.truth.truths
    sizes = graph.sizes

    def row(table: np.ndarray, memory: np.ndarray | None) -> dict[str, Any]:
        on_truth = segments_of(table, graph.truth.segments)
        scores: dict[str, Any] = {
            "segments": int(np.unique(segments_of(table, graph.fragments)).size),
            "vs_truth": voi(on_truth, truth_of, graph.truth.counts),
        }
        if memory is not None:
            mine = segments_of(table, graph.fragments)
            scores["vs_memory"] = voi(mine, memory, sizes)
        return scores

    table, seconds = run_graph_mws(graph, LUT(path=workdir / "memory.npz"))
    memory = segments_of(table, graph.fragments)
    rows = [{"run": "memory", "seconds": round(seconds, 2), **row(table, None)}]
    for config in level_runs(graph.roi, graph.min_block):
        block = config["block_size"]
        context = {"0": block * 0, "half": block // 2, "full": block}[config["context"]]
        name = f"L{config['levels']} {config['edge_score']} ctx={config['context']}"
        result = {"run": name, **config, "block_size": list(block)}
        try:
            table, seconds = run_graph_mws(
                graph,
                LUT(path=workdir / "levels.npz"),
                block_size=block,
                context=context,
                edge_score=config["edge_score"],
                levels=config["levels"],
            )
        except Exception as error:  # a failed run is a result too
            rows.append(result | {"failed": str(error).splitlines()[-1]})
            continue
        rows.append(result | {"seconds": round(seconds, 2), **row(table, memory)})
    return rows


def datasets(args: argparse.Namespace) -> list[tuple[str, float, int, Callable]]:
    """``(shape, noise, seed, make(path) -> Graph)`` of every graph to score."""
    found = []
    for shape_name in args.shapes:
        noises = NEURITE_NOISE if shape_name == "neurites" else NOISE[shape_name]
        seeds = args.neurite_seeds if shape_name == "neurites" else args.seeds
        for noise in noises:
            for seed in range(seeds):
                if shape_name == "neurites":

                    def make(path, noise=noise, seed=seed):
                        return neurite_graph(path, noise, seed)

                else:

                    def make(path, noise=noise, seed=seed, shape_name=shape_name):
                        return synthetic_graph(path, shape_name, noise, seed)

                found.append((shape_name, noise, seed, make))
    return found


def summary_table(rows: list[dict[str, Any]], shape_name: str) -> str:
    """Markdown: per run and noise, the mean over seeds of VOI against the
    truth and against the in-memory GraphMWS (largest in brackets), and the
    mean segment count; per run, on how many graphs it is within `TARGET`
    of the in-memory GraphMWS."""
    rows = [r for r in rows if r["shape"] == shape_name]
    noises = sorted({r["noise"] for r in rows})
    runs = list(dict.fromkeys(r["run"] for r in rows))
    header = ["run"] + [
        f"noise {n}: {part}"
        for n in noises
        for part in ("VOI truth", "VOI memory (max)", "segments")
    ]
    header.append(f"VOI memory <= {TARGET}")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for run in runs:
        cells = [run]
        for noise in noises:
            mine = [r for r in rows if r["run"] == run and r["noise"] == noise]
            failed = sum("failed" in r for r in mine)
            mine = [r for r in mine if "failed" not in r]
            if not mine:
                cells += [f"failed ({failed})", "", ""]
                continue
            truth = np.mean([r["vs_truth"]["voi"] for r in mine])
            cells.append(f"{truth:.3f}")
            if run == "memory":
                cells.append("")
            else:
                versus = [r["vs_memory"]["voi"] for r in mine]
                cells.append(f"{np.mean(versus):.3f} ({max(versus):.3f})")
            cells.append(f"{np.mean([r['segments'] for r in mine]):.0f}")
            if failed:
                cells[-1] += f" ({failed} failed)"
        mine = [r for r in rows if r["run"] == run and "vs_memory" in r]
        within = sum(r["vs_memory"]["voi"] <= TARGET for r in mine)
        cells.append("" if run == "memory" else f"{within} of {len(mine)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def quality(args: argparse.Namespace) -> None:
    workdir = args.workdir.absolute() / "quality"
    set_log_basedir(workdir / "logs")
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for shape_name, noise, seed, make in datasets(args):
        path = workdir / f"{shape_name}-noise{noise}-seed{seed}"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        start = time.perf_counter()
        graph = make(path)
        made = time.perf_counter() - start
        for result in score_graph(graph, path):
            rows.append({"shape": shape_name, "noise": noise, "seed": seed, **result})
        print(
            f"{shape_name} noise {noise} seed {seed}: {graph.fragments.size} "
            f"fragments, graph {made:.1f} s, runs {time.perf_counter() - start - made:.1f} s",
            file=sys.stderr,
        )
        if not args.keep:
            shutil.rmtree(path)
    tables = {shape: summary_table(rows, shape) for shape in args.shapes}
    (workdir / "quality.json").write_text(json.dumps(rows, indent=1))
    (workdir / "quality.md").write_text("\n\n".join(tables.values()) + "\n")
    for shape, table in tables.items():
        print(f"\n{shape}\n{table}", file=sys.stderr)
    print_json(
        {
            "benchmark": "graph_mws_levels.quality",
            "seconds": round(time.perf_counter() - started, 1),
            "tables": tables,
            "rows": rows,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["quality", "scale"])
    parser.add_argument(
        "--workdir", type=Path, default=Path("bench_output/graph_mws_levels")
    )
    parser.add_argument(
        "--shapes", nargs="+", default=["lattice", "columns", "neurites"]
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--neurite-seeds", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the graphs")
    args, rest = parser.parse_known_args()
    if args.mode == "quality":
        if rest:
            parser.error(f"unknown arguments {rest}")
        quality(args)
    else:
        from graph_mws_scale import main as scale

        scale(rest, args.workdir.absolute() / "scale")


if __name__ == "__main__":
    main()
