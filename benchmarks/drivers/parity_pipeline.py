"""Run one parity pipeline with whichever volara the interpreter has, and
print where its outputs are (and the seconds of each stage) as one JSON line.

The same file runs under volara 2 (this repository) and under volara 1.0.5
(its own virtual environment, started by ``parity.py``): it uses only the
public API both share (`volara.blockwise`, `volara.datasets`, `volara.dbs`,
`volara.lut`, `volara.logging`) and gives both versions the same task
configs; where a version refuses one, the output says so (``notes``).

Pipelines (``--config``, a JSON object, key ``pipeline``):

- ``segmentation``: ExtractFrags, AffAgglom, GraphMWS, Relabel;
- ``distance``: ExtractFrags, the mean of ``<data>/intensity`` per fragment
  written on its node, DistanceAgglom on it, GraphMWS, Relabel (1.0.5's
  DistanceAgglom config; see `distance` for a version that refuses it);
- ``seeded``: the skeletons of ``<data>/skeletons.json`` written to a SQLite
  graph, then SeededExtractFrags.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi
from funlib.persistence import open_ds

import volara
from volara.blockwise import (
    AffAgglom,
    DistanceAgglom,
    ExtractFrags,
    GraphMWS,
    Relabel,
    SeededExtractFrags,
)
from volara.datasets import Affs, Labels, Raw
from volara.dbs import SQLite
from volara.logging import set_log_basedir
from volara.lut import LUT

VOLARA_2 = volara.__version__.split(".")[0] == "2"


def run(task: Any, figures: dict[str, float], name: str) -> None:
    """Run ``task`` from scratch; fail unless every block completed."""
    start = time.perf_counter()
    if VOLARA_2:
        states = task.run_blockwise(progress=False, summary=False)
        for task_name, state in states.items():
            if state.completed_count != state.total_block_count:
                raise RuntimeError(f"{task_name}: not every block completed: {state}")
    elif not task.run_blockwise():
        raise RuntimeError(f"{name}: not every block completed")
    figures[name] = round(time.perf_counter() - start, 3)


def neighborhood_of(data: Path) -> list[Coordinate]:
    stored: Any = zarr.open_array(str(data / "affinities"), mode="r").attrs[
        "neighborhood"
    ]
    return [Coordinate(offset) for offset in stored]


def extract_frags(
    config: dict, data: Path, affs: Affs, db: SQLite, fragments: Labels, workers: int
) -> ExtractFrags:
    options: dict[str, Any] = {}
    for key in ("strides", "sigma", "filter_fragments", "remove_debris"):
        if config.get(key) is not None:
            options[key] = config[key]
    if config.get("mask"):
        options["mask_data"] = Raw(store=data / "mask")
    return ExtractFrags(
        db=db,
        affs_data=affs,
        frags_data=fragments,
        block_size=Coordinate(config["block_size"]),
        context=Coordinate(config["context"]),
        bias=config["bias"],
        noise_eps=None,
        num_workers=workers,
        **options,
    )


def graph_mws_and_relabel(
    config: dict,
    db: SQLite,
    weights: dict,
    fragments: Labels,
    out: Path,
    roi: Roi,
    workers: int,
) -> tuple[GraphMWS, Relabel]:
    lut = LUT(path=out / "lut.npz")
    graph_mws = GraphMWS(db=db, lut=lut, weights=weights, roi=roi)
    relabel = Relabel(
        frags_data=fragments,
        seg_data=Labels(store=out / "output.zarr" / "segments"),
        lut=lut,
        block_size=Coordinate(config["block_size"]),
        num_workers=workers,
    )
    return graph_mws, relabel


def segmentation(config: dict, data: Path, out: Path, workers: int) -> dict[str, Any]:
    neighborhood = neighborhood_of(data)
    affs = Affs(store=data / "affinities", neighborhood=neighborhood)
    short = [o for o in neighborhood if max(abs(c) for c in o) == 1]
    long = [o for o in neighborhood if max(abs(c) for c in o) > 1]
    db = SQLite(
        path=out / "graph.sqlite",
        edge_attrs={"adj_weight": "float", "lr_weight": "float"},
    )
    fragments = Labels(store=out / "output.zarr" / "fragments")
    short_bias, long_bias = config["merge_bias"]
    figures: dict[str, Any] = {}
    run(
        extract_frags(config, data, affs, db, fragments, workers),
        figures,
        "ExtractFrags",
    )
    aff_agglom = AffAgglom(
        db=db,
        affs_data=affs,
        frags_data=fragments,
        block_size=Coordinate(config["block_size"]),
        context=Coordinate(config["context"]),
        scores={"adj_weight": short, "lr_weight": long},
        num_workers=workers,
    )
    run(aff_agglom, figures, "AffAgglom")
    weights = {"adj_weight": (1.0, short_bias), "lr_weight": (1.0, long_bias)}
    roi = open_ds(data / "affinities").roi
    graph_mws, relabel = graph_mws_and_relabel(
        config, db, weights, fragments, out, roi, workers
    )
    run(graph_mws, figures, "GraphMWS")
    run(relabel, figures, "Relabel")
    return {
        "seconds": figures,
        "fragments": str(out / "output.zarr" / "fragments"),
        "segments": str(out / "output.zarr" / "segments"),
        "notes": [],
    }


def write_mean_intensities(db: SQLite, fragments: Labels, data: Path) -> int:
    """Store on every fragment's node the mean of ``<data>/intensity`` over
    its voxels (attribute ``intensity``); returns the number of nodes."""
    labels = np.asarray(zarr.open_array(str(fragments.store), mode="r")[:])
    intensity = np.asarray(zarr.open_array(str(data / "intensity"), mode="r")[:])
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.ravel()
    means = np.bincount(inverse, weights=intensity.ravel()) / np.bincount(inverse)
    mean_of = dict(zip(ids.tolist(), means.tolist(), strict=True))
    provider: Any = db.open("r+")
    graph = provider.read_graph()
    for node in graph.nodes:
        graph.nodes[node]["intensity"] = mean_of.get(int(node), 0.0)
    provider.update_nodes(graph.nodes, attributes=["intensity"])
    return graph.number_of_nodes()


def distance(config: dict, data: Path, out: Path, workers: int) -> dict[str, Any]:
    """Fragments merged where their mean intensities differ by less than
    ``config["intensity_threshold"]``, over fragments that touch.

    The config is volara 1.0.5's: DistanceAgglom pairs fragments whose
    voxels come within ``distance_threshold`` (world units; one voxel here,
    so on isotropic voxels the pairs that share a face) and writes
    ``intensity_similarity = -|a - b|`` ("euclidean"); GraphMWS merges on
    ``intensity_similarity + threshold``. 1.0.5 pairs only fragments whose
    nodes (centers) lie in the block's read region, so its context is
    ``config["agglom_context"]``, a whole block. If this volara refuses that
    config, it runs its own equivalent (pairs of touching fragments, the
    embedding distance ``|a - b|`` as ``distance``, GraphMWS on
    ``threshold - distance``) and says so in the notes."""
    neighborhood = neighborhood_of(data)
    affs = Affs(store=data / "affinities", neighborhood=neighborhood)
    voxel_size = open_ds(data / "affinities").voxel_size
    threshold = config["intensity_threshold"]
    db = SQLite(
        path=out / "graph.sqlite",
        node_attrs={"intensity": "float"},
        edge_attrs={"intensity_similarity": "float"},
    )
    fragments = Labels(store=out / "output.zarr" / "fragments")
    figures: dict[str, Any] = {}
    notes: list[str] = []
    run(
        extract_frags(config, data, affs, db, fragments, workers),
        figures,
        "ExtractFrags",
    )
    start = time.perf_counter()
    write_mean_intensities(db, fragments, data)
    figures["intensities"] = round(time.perf_counter() - start, 3)
    shared: dict[str, Any] = dict(
        storage=db,
        frags_data=fragments,
        distance_keys=["intensity"],
        distance_metric="euclidean",
        block_size=Coordinate(config["block_size"]),
        context=Coordinate(config["agglom_context"]),
        num_workers=workers,
    )
    weights: dict[str, tuple[float, float]] = {"intensity_similarity": (1.0, threshold)}
    try:
        agglom = DistanceAgglom(distance_threshold=float(min(voxel_size)), **shared)
        run(agglom, figures, "DistanceAgglom")
    except ValueError as error:
        if not VOLARA_2:
            raise
        notes.append(
            f"volara {volara.__version__} refused volara 1.0.5's DistanceAgglom "
            f"config ({str(error).splitlines()[0]}); ran its own: touching pairs, "
            "GraphMWS on threshold - distance"
        )
        db.drop_edges()
        run(DistanceAgglom(**shared), figures, "DistanceAgglom")
        weights = {"distance": (-1.0, threshold)}
    roi = open_ds(data / "affinities").roi
    graph_mws, relabel = graph_mws_and_relabel(
        config, db, weights, fragments, out, roi, workers
    )
    run(graph_mws, figures, "GraphMWS")
    run(relabel, figures, "Relabel")
    return {
        "seconds": figures,
        "fragments": str(out / "output.zarr" / "fragments"),
        "segments": str(out / "output.zarr" / "segments"),
        "notes": notes,
    }


def write_skeletons(db: SQLite, skeletons: dict) -> None:
    """Nodes with ``position`` (world units) and ``skeleton_id`` (1.0.5
    labels by it), edges between nodes of one skeleton (volara 2 labels by
    connected component and paints the edges)."""
    db.init()
    graph = nx.Graph()
    for node, position, skeleton_id in skeletons["nodes"]:
        graph.add_node(
            int(node),
            position=tuple(float(p) for p in position),
            skeleton_id=int(skeleton_id),
        )
    graph.add_edges_from((int(u), int(v)) for u, v in skeletons["edges"])
    db.open("r+").write_graph(graph)


def seeded(config: dict, data: Path, out: Path, workers: int) -> dict[str, Any]:
    neighborhood = neighborhood_of(data)
    affs = Affs(store=data / "affinities", neighborhood=neighborhood)
    graph_db = SQLite(path=out / "skeletons.sqlite", node_attrs={"skeleton_id": "int"})
    write_skeletons(graph_db, json.loads((data / "skeletons.json").read_text()))
    options: dict[str, Any] = {}
    if config.get("strides") is not None:
        options["strides"] = config["strides"]
    if config.get("mask"):
        options["mask_data"] = Labels(store=data / "mask")
    task = SeededExtractFrags(
        affs_data=affs,
        segs_data=Labels(store=out / "output.zarr" / "segments"),
        graph_db=graph_db,
        block_size=Coordinate(config["block_size"]),
        context=Coordinate(config["context"]),
        bias=config["bias"],
        num_workers=workers,
        **options,
    )
    figures: dict[str, Any] = {}
    run(task, figures, "SeededExtractFrags")
    return {
        "seconds": figures,
        "fragments": None,
        "segments": str(out / "output.zarr" / "segments"),
        "notes": [],
    }


PIPELINES = {"segmentation": segmentation, "distance": distance, "seeded": seeded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    config = json.loads(args.config.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    set_log_basedir(args.out / "logs")
    result = PIPELINES[config["pipeline"]](config, args.data, args.out, args.workers)
    result["volara"] = volara.__version__
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
