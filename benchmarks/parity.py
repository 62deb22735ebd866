"""Parity: volara 2 and volara 1.0.5 on the same data with the same
parameters, segmentation against segmentation and each against the truth.

Every dataset is generated once by volara 2's `generate_sample_data` (kept
in ``<workdir>/data/<name>``) and read by both versions. Each version runs
``drivers/parity_pipeline.py`` in a child process of its own interpreter
(volara 1.0.5 from its virtual environment), two workers, ``noise_eps``
unset. Per dataset this prints one row of a table: fragment and segment
counts of both, the variation of information (split + merge) between the two
fragmentations and between the two segmentations, and each version's VOI
split / merge and adapted Rand error against the ground truth; the same
figures, with stage seconds, go to ``<workdir>/parity.json``.

    python benchmarks/parity.py --volara1-python v1venv/bin/python
    python benchmarks/parity.py --volara1-python v1venv/bin/python --write-reference

``--write-reference`` runs volara 1.0.5 alone on the CI datasets and writes
one JSON per dataset into ``tests/parity_reference/`` (generation arguments,
task parameters, fragment and segment counts, scores against the truth);
``tests/test_parity_reference.py`` reruns volara 2 on them.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from common import run_driver
from funlib.persistence import open_ds, prepare_ds
from scipy.ndimage import distance_transform_edt, find_objects
from skimage.metrics import variation_of_information

from volara import sample_data
from volara.kernels import affinities, synthetic
from volara.kernels.metrics import segmentation_scores
from volara.sample_data import DEFAULT_NEIGHBORHOOD, generate_sample_data

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "drivers" / "parity_pipeline.py"
REFERENCE_DIR = HERE.parent / "tests" / "parity_reference"

ANISOTROPIC = dict(voxel_size=(40, 4, 4), neighborhood=DEFAULT_NEIGHBORHOOD)
ISOTROPIC_NEIGHBORHOOD = [
    (1, 0, 0),
    (0, 1, 0),
    (0, 0, 1),
    (3, 0, 0),
    (0, 3, 0),
    (0, 0, 3),
    (6, 0, 0),
    (0, 6, 0),
    (0, 0, 6),
]
ISOTROPIC = dict(voxel_size=(8, 8, 8), neighborhood=ISOTROPIC_NEIGHBORHOOD)
BIAS = [-0.4] * 3 + [-0.7] * 6
"""ExtractFrags bias: short-range offsets prefer merging, long-range splitting."""
ANISOTROPIC_TASK = dict(
    block_size=(15, 64, 64), context=(5, 16, 16), bias=BIAS, merge_bias=(-0.4, -0.7)
)
ISOTROPIC_TASK = dict(
    block_size=(32, 48, 48), context=(8, 8, 8), bias=BIAS, merge_bias=(-0.4, -0.7)
)
LONG_RANGE_STRIDES = [(1, 1, 1)] * 3 + [(2, 2, 2)] * 6

DATASETS: list[dict[str, Any]] = [
    {
        "name": "aniso-cells-noise0.05",
        "about": "anisotropic cells, low noise, no membranes",
        "data": dict(
            shape=(30, 128, 128), num_cells=60, noise=0.05, seed=1, **ANISOTROPIC
        ),
        "task": dict(pipeline="segmentation", **ANISOTROPIC_TASK),
    },
    {
        "name": "aniso-cells-noise0.3",
        "about": "anisotropic cells, high noise, no membranes",
        "data": dict(
            shape=(30, 128, 128), num_cells=100, noise=0.3, seed=2, **ANISOTROPIC
        ),
        "task": dict(pipeline="segmentation", **ANISOTROPIC_TASK),
    },
    {
        "name": "aniso-membranes-mask",
        "about": "anisotropic cells with membranes; a masked-out cylinder",
        "data": dict(
            shape=(30, 128, 128),
            num_cells=80,
            noise=0.15,
            seed=3,
            membranes=True,
            **ANISOTROPIC,
        ),
        "extras": {"mask": True},
        "task": dict(pipeline="segmentation", mask=True, **ANISOTROPIC_TASK),
    },
    {
        "name": "aniso-many-touching-filter",
        "about": "250 touching cells (no membranes), filter_fragments",
        "ci": True,
        "data": dict(
            shape=(24, 96, 96), num_cells=250, noise=0.2, seed=4, **ANISOTROPIC
        ),
        "task": dict(
            pipeline="segmentation",
            filter_fragments=0.5,
            **{**ANISOTROPIC_TASK, "block_size": (12, 48, 48)},
        ),
    },
    {
        "name": "aniso-uint8-noise0.2",
        "about": "uint8 affinities, membranes",
        "data": dict(
            shape=(24, 96, 96),
            num_cells=80,
            noise=0.2,
            seed=5,
            membranes=True,
            affs_dtype="uint8",
            **ANISOTROPIC,
        ),
        "task": dict(
            pipeline="segmentation", **{**ANISOTROPIC_TASK, "block_size": (12, 48, 48)}
        ),
    },
    {
        "name": "aniso-uint8-touching-noise0.3",
        "about": "uint8 affinities, touching cells, high noise",
        "ci": True,
        "data": dict(
            shape=(24, 96, 96),
            num_cells=100,
            noise=0.3,
            seed=12,
            affs_dtype="uint8",
            **ANISOTROPIC,
        ),
        "task": dict(
            pipeline="segmentation", **{**ANISOTROPIC_TASK, "block_size": (12, 48, 48)}
        ),
    },
    {
        "name": "iso-cells-strides-sigma",
        "about": "isotropic cells, strided long-range edges, smoothed affinities",
        "data": dict(
            shape=(64, 96, 96),
            num_cells=40,
            noise=0.15,
            seed=6,
            membranes=True,
            **ISOTROPIC,
        ),
        "task": dict(
            pipeline="segmentation",
            strides=LONG_RANGE_STRIDES,
            sigma=(1, 1, 1),
            **ISOTROPIC_TASK,
        ),
    },
    {
        "name": "iso-neurites-debris",
        "about": "isotropic elongated neurites, membranes, remove_debris",
        "ci": True,
        "data": dict(
            shape=(40, 80, 80),
            num_cells=30,
            noise=0.25,
            seed=7,
            objects="neurites",
            membranes=True,
            **ISOTROPIC,
        ),
        "task": dict(
            pipeline="segmentation",
            remove_debris=20,
            **{**ISOTROPIC_TASK, "block_size": (20, 40, 40)},
        ),
    },
    {
        "name": "aniso-neurites-wide-membranes",
        "about": "anisotropic neurites, 2-voxel membranes, filter_fragments and remove_debris",
        "data": dict(
            shape=(30, 128, 128),
            num_cells=40,
            noise=0.2,
            seed=8,
            objects="neurites",
            membrane_width=2,
            **ANISOTROPIC,
        ),
        "task": dict(
            pipeline="segmentation",
            filter_fragments=0.4,
            remove_debris=50,
            **ANISOTROPIC_TASK,
        ),
    },
    {
        "name": "seeded-aniso",
        "about": "SeededExtractFrags from 30 skeletons (nodes and edges in SQLite)",
        "data": dict(
            shape=(30, 128, 128), num_cells=60, noise=0.15, seed=10, **ANISOTROPIC
        ),
        "extras": {"skeletons": 30},
        "task": dict(pipeline="seeded", **ANISOTROPIC_TASK),
    },
    {
        "name": "distance-iso",
        "about": "DistanceAgglom on mean intensities of fragments, isotropic",
        "data": dict(
            shape=(40, 64, 64), num_cells=20, noise=0.15, seed=11, **ISOTROPIC
        ),
        "extras": {"intensity": True},
        "task": dict(
            pipeline="distance",
            intensity_threshold=0.02,
            agglom_context=(20, 32, 32),
            **{**ISOTROPIC_TASK, "block_size": (20, 32, 32)},
        ),
    },
]


def without_ties(name: str, ci: bool = False) -> dict[str, Any]:
    """The dataset ``name`` with affinities of which no two are equal
    (float64): volara 2 must give volara 1.0.5's very fragments."""
    base = next(dataset for dataset in DATASETS if dataset["name"] == name)
    return {
        **base,
        "name": f"{name}-tie-free",
        "about": f"{name} without equal affinities (float64)",
        "ci": ci,
        "data": {**base["data"], "affs_dtype": "float64"},
    }


DATASETS += [
    without_ties("aniso-cells-noise0.3"),
    without_ties("iso-neurites-debris", ci=True),
]


# ------------------------------------------------------------------- data


def unsupported_arguments(arguments: dict[str, Any]) -> list[str]:
    """Arguments this volara's `generate_sample_data` does not take."""
    accepted = inspect.signature(generate_sample_data).parameters
    return [name for name in arguments if name not in accepted]


def generator_digest() -> str:
    """Changes when the code that generates the data changes."""
    digest = hashlib.sha256()
    for module in (sample_data, synthetic, affinities):
        digest.update(Path(inspect.getfile(module)).read_bytes())
    return digest.hexdigest()[:16]


def prepare_data(workdir: Path, dataset: dict[str, Any]) -> Path:
    """The dataset's zarr container (and extras), written once and reused
    while its parameters and the generating code stay the same."""
    folder = workdir / "data" / dataset["name"]
    container = folder / "sample.zarr"
    marker = folder / "parameters.json"
    wanted = json.dumps(
        {
            "data": dataset["data"],
            "extras": dataset.get("extras", {}),
            "generator": generator_digest(),
        },
        sort_keys=True,
        default=list,
    )
    if marker.exists() and marker.read_text() == wanted:
        return container
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    generate_sample_data(container, **dataset["data"])
    extras = dataset.get("extras", {})
    truth = np.asarray(zarr.open_array(str(container / "labels"), mode="r")[:])
    rng = np.random.default_rng(dataset["data"]["seed"] + 1000)
    if extras.get("mask"):
        _write_like(container, "mask", cylinder_mask(truth.shape))
    if extras.get("intensity"):
        _write_like(container, "intensity", object_intensities(truth, rng))
    if extras.get("skeletons"):
        voxel_size = dataset["data"]["voxel_size"]
        skeletons = skeletons_from_truth(truth, voxel_size, extras["skeletons"], rng)
        (container / "skeletons.json").write_text(json.dumps(skeletons))
    marker.write_text(wanted)
    return container


def _write_like(container: Path, name: str, data: np.ndarray) -> None:
    labels = open_ds(container / "labels")
    array = prepare_ds(
        container / name,
        shape=data.shape,
        offset=labels.offset,
        voxel_size=labels.voxel_size,
        axis_names=labels.axis_names,
        units=labels.units,
        chunk_shape=labels.chunk_shape,
        dtype=data.dtype,
    )
    array[array.roi] = data


def cylinder_mask(shape: tuple[int, ...]) -> np.ndarray:
    """uint8 1 everywhere but in a cylinder along z (a quarter of the
    smaller in-plane side in radius), as out-of-tissue regions look."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    radius = min(shape[1], shape[2]) / 4
    inside = (y - 0.7 * shape[1]) ** 2 + (x - 0.3 * shape[2]) ** 2 < radius**2
    return np.broadcast_to(~inside, shape).astype(np.uint8)


def object_intensities(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float32: one uniform random value per object (0 on background) plus
    gaussian noise of 0.05."""
    values = rng.uniform(0.0, 1.0, size=int(truth.max()) + 1)
    values[0] = 0.0
    image = values[truth] + rng.standard_normal(truth.shape) * 0.05
    return image.astype(np.float32)


def skeletons_from_truth(
    truth: np.ndarray, voxel_size: tuple[int, ...], count: int, rng: np.random.Generator
) -> dict[str, Any]:
    """Skeletons of ``count`` random objects: up to 5 deep points of each
    object (voxel centers, world units), joined by a tree whose straight
    edges stay inside the object. Node ids count up from 1 and skeletons are
    numbered in the same order, so volara 1.0.5's ``skeleton_id`` and volara
    2's component labels name each skeleton alike."""
    ids = [i for i in np.unique(truth) if i != 0]
    chosen = sorted(rng.choice(ids, size=min(count, len(ids)), replace=False))
    boxes = find_objects(truth.astype(np.int64))
    nodes: list[list[Any]] = []
    edges: list[list[int]] = []
    for skeleton_id, object_id in enumerate(chosen, 1):
        box = boxes[int(object_id) - 1]
        inside = truth[box] == object_id
        depth = distance_transform_edt(inside, sampling=voxel_size)
        points = _deep_points(depth, voxel_size)
        tree = _tree_inside(points, depth > 0)
        first = len(nodes) + 1
        kept = sorted({0, *(i for edge in tree for i in edge)})
        number = {i: first + n for n, i in enumerate(kept)}
        for i in kept:
            position = (
                np.asarray(points[i]) + [b.start for b in box] + 0.5
            ) * voxel_size
            nodes.append([number[i], position.tolist(), skeleton_id])
        edges.extend([number[u], number[v]] for u, v in tree)
    return {"nodes": nodes, "edges": edges, "objects": [int(i) for i in chosen]}


def _deep_points(depth: np.ndarray, voxel_size) -> list[tuple[int, ...]]:
    """Up to 5 voxels of greatest depth, each at least the deepest depth
    (world units) away from the others."""
    spacing = max(float(depth.max()), 2.0 * max(voxel_size))
    order = np.argsort(depth, axis=None)[::-1][:20000]
    points: list[np.ndarray] = []
    for flat in order:
        point = np.array(np.unravel_index(flat, depth.shape))
        if depth[tuple(point)] <= 0:
            break
        if all(np.linalg.norm((point - p) * voxel_size) >= spacing for p in points):
            points.append(point)
            if len(points) == 5:
                break
    return [tuple(int(c) for c in p) for p in points]


def _tree_inside(
    points: list[tuple[int, ...]], inside: np.ndarray
) -> list[tuple[int, int]]:
    """A tree over ``points`` grown from the first, by shortest straight
    edges whose every voxel is inside."""
    connected: set[int] = {0}
    edges: list[tuple[int, int]] = []
    while True:
        best = None
        for u in connected:
            for v in range(len(points)):
                if v in connected or not _line_inside(points[u], points[v], inside):
                    continue
                length = np.linalg.norm(np.subtract(points[u], points[v]))
                if best is None or length < best[0]:
                    best = (length, u, v)
        if best is None:
            return edges
        connected.add(best[2])
        edges.append((best[1], best[2]))


def _line_inside(a, b, inside: np.ndarray) -> bool:
    a, b = np.asarray(a, float) + 0.5, np.asarray(b, float) + 0.5
    steps = int(np.ceil(np.abs(b - a).max())) + 1
    samples = a + np.linspace(0, 1, steps)[:, None] * (b - a)
    voxels = np.floor(samples).astype(int)
    return bool(inside[tuple(voxels.T)].all())


# ------------------------------------------------------------------- runs


def run_version(
    name: str, python: str, data: Path, dataset: dict[str, Any], out: Path, workers: int
) -> dict[str, Any]:
    """One version's pipeline on one dataset, from scratch."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config = out / "config.json"
    config.write_text(json.dumps(dataset["task"], default=list))
    command = [python, str(DRIVER), "--data", str(data), "--out", str(out)]
    command += ["--config", str(config), "--workers", str(workers)]
    start = time.perf_counter()
    result = run_driver(command, out / "driver.log", own_environment=name == "volara2")
    result["wall_seconds"] = round(time.perf_counter() - start, 2)
    return result


def read_labels(path: str | None) -> np.ndarray | None:
    if path is None:
        return None
    return np.asarray(zarr.open_array(path, mode="r")[:])


def count_ids(labels: np.ndarray | None) -> int | None:
    if labels is None:
        return None
    return int(np.count_nonzero(np.unique(labels)))


def evaluation_truth(data: Path, dataset: dict[str, Any]) -> np.ndarray:
    """The truth scored against: the generated labels, inside the mask
    (masked voxels get no fragment by design), and for seeded runs only the
    objects that have a skeleton."""
    truth = np.asarray(zarr.open_array(str(data / "labels"), mode="r")[:])
    if dataset["task"].get("mask"):
        truth = truth * (
            np.asarray(zarr.open_array(str(data / "mask"), mode="r")[:]) > 0
        )
    if dataset["task"]["pipeline"] == "seeded":
        objects = json.loads((data / "skeletons.json").read_text())["objects"]
        truth = np.where(np.isin(truth, objects), truth, 0)
    return truth


def voi_between(
    a: np.ndarray | None, b: np.ndarray | None, where: np.ndarray | None = None
) -> float | None:
    """VOI (split + merge) between two labelings, over ``where`` (default:
    every voxel; 0 counts as a label)."""
    if a is None or b is None:
        return None
    if where is not None:
        a, b = a[where], b[where]
    return round(float(sum(variation_of_information(a, b))), 4)


def score_version(run: dict[str, Any], truth: np.ndarray) -> dict[str, Any]:
    fragments, segments = read_labels(run["fragments"]), read_labels(run["segments"])
    assert segments is not None
    figures: dict[str, Any] = {
        "fragments": count_ids(fragments),
        "segments": count_ids(segments),
    }
    figures.update(
        {k: round(v, 4) for k, v in segmentation_scores(segments, truth).items()}
    )
    if fragments is not None:
        figures["fragments_vs_truth"] = {
            k: round(v, 4) for k, v in segmentation_scores(fragments, truth).items()
        }
    figures["seconds"] = run["seconds"]
    figures["wall_seconds"] = run["wall_seconds"]
    figures["notes"] = run["notes"]
    figures["_labels"] = (fragments, segments)
    return figures


def run_dataset(
    dataset: dict[str, Any], pythons: dict[str, str], workdir: Path, workers: int
) -> dict[str, Any]:
    data = prepare_data(workdir, dataset)
    truth = evaluation_truth(data, dataset)
    result: dict[str, Any] = {
        "name": dataset["name"],
        "about": dataset["about"],
        "ci": dataset.get("ci", False),
        "data": dataset["data"],
        "extras": dataset.get("extras", {}),
        "task": dataset["task"],
    }
    labels = {}
    for name, python in pythons.items():
        out = workdir / "runs" / dataset["name"] / name
        figures = score_version(
            run_version(name, python, data, dataset, out, workers), truth
        )
        labels[name] = figures.pop("_labels")
        result[name] = figures
    if len(labels) == 2:
        (f1, s1), (f2, s2) = labels["volara1"], labels["volara2"]
        # masked voxels: volara 2 leaves them 0 by design, 1.0.5 lets
        # attractive edges from outside reach in; compared inside the mask
        where = None
        if dataset["task"].get("mask"):
            where = np.asarray(zarr.open_array(str(data / "mask"), mode="r")[:]) > 0
            result["voi_fragments_between_whole_volume"] = voi_between(f1, f2)
            result["voi_segments_between_whole_volume"] = voi_between(s1, s2)
        result["voi_fragments_between"] = voi_between(f1, f2, where)
        result["voi_segments_between"] = voi_between(s1, s2, where)
    return result


# ------------------------------------------------------------------ output


def _format(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(results: list[dict[str, Any]]) -> str:
    """One markdown row per dataset."""
    head = (
        "| dataset | fragments v1 / v2 | segments v1 / v2 | VOI frags v1-v2 | "
        "VOI segs v1-v2 | v1 split / merge / ARE | v2 split / merge / ARE |"
    )
    lines = [head, "| " + " | ".join(["---"] * 7) + " |"]
    for r in results:
        versions = [r.get("volara1", {}), r.get("volara2", {})]
        cell = [
            " / ".join(_format(v.get("fragments")) for v in versions),
            " / ".join(_format(v.get("segments")) for v in versions),
            _format(r.get("voi_fragments_between")),
            _format(r.get("voi_segments_between")),
        ]
        for v in versions:
            cell.append(
                " / ".join(
                    _format(v.get(k))
                    for k in ("voi_split", "voi_merge", "adapted_rand_error")
                )
            )
        lines.append(f"| {r['name']} | " + " | ".join(cell) + " |")
    return "\n".join(lines)


def reference(dataset: dict[str, Any], volara1: dict[str, Any]) -> dict[str, Any]:
    """What `tests/test_parity_reference.py` needs to rerun one dataset."""
    return {
        "name": dataset["name"],
        "about": dataset["about"],
        "written_by": "benchmarks/parity.py --write-reference, from volara 1.0.5's run",
        "volara": volara1["volara"],
        "sample_data": dataset["data"],
        "task": {**dataset["task"], "num_workers": 2, "noise_eps": None},
        "fragments": volara1["fragments"],
        "segments": volara1["segments"],
        "voi_split": volara1["voi_split"],
        "voi_merge": volara1["voi_merge"],
        "adapted_rand_error": volara1["adapted_rand_error"],
    }


def reseeded(dataset: dict[str, Any], seed: int) -> dict[str, Any]:
    """``dataset`` generated from another seed."""
    return {
        **dataset,
        "name": f"{dataset['name']}-s{seed}",
        "ci": False,
        "data": {**dataset["data"], "seed": seed},
    }


def means(results: list[dict[str, Any]]) -> str:
    """Each version's VOI (split + merge) and ARE against the truth, averaged
    over the datasets both versions ran."""
    both = [r for r in results if "volara1" in r and "volara2" in r]
    lines = [f"mean over {len(both)} datasets:"]
    for version in ("volara1", "volara2"):
        voi = np.mean([r[version]["voi_split"] + r[version]["voi_merge"] for r in both])
        are = np.mean([r[version]["adapted_rand_error"] for r in both])
        lines.append(f"  {version}: VOI {voi:.4f}, ARE {are:.4f}")
    return "\n".join(lines)


def compact_json(value: Any) -> str:
    """Indented JSON with every list of numbers on one line."""
    text = json.dumps(value, indent=2, default=list)
    numbers = re.compile(r"\[\s*([-+\d.eE,\s]*?)\s*\]")
    return (
        numbers.sub(lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text) + "\n"
    )


def write_references(
    datasets: list[dict[str, Any]], python: str, workdir: Path, workers: int
) -> None:
    REFERENCE_DIR.mkdir(parents=True, exist_ok=True)
    for dataset in datasets:
        data = prepare_data(workdir, dataset)
        out = workdir / "runs" / dataset["name"] / "volara1"
        run = run_version("volara1", python, data, dataset, out, workers)
        figures = score_version(run, evaluation_truth(data, dataset))
        figures.pop("_labels")
        figures["volara"] = run["volara"]
        path = REFERENCE_DIR / f"{dataset['name']}.json"
        path.write_text(compact_json(reference(dataset, figures)))
        print(
            f"wrote {path}: {figures['fragments']} fragments, {figures['segments']} segments",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("bench_output/parity"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--volara1-python",
        help="python of a virtual environment with volara==1.0.5; without it "
        "only volara 2 runs",
    )
    parser.add_argument("--only", nargs="+", help="run only these datasets")
    parser.add_argument("--ci", action="store_true", help="run only the CI datasets")
    parser.add_argument(
        "--extra-seeds",
        type=int,
        nargs="+",
        default=[],
        help="also run every selected dataset generated with each of these "
        "seeds (named <name>-s<seed>), and print each version's mean scores",
    )
    parser.add_argument(
        "--write-reference",
        action="store_true",
        help="run volara 1.0.5 on the CI datasets and write tests/parity_reference/",
    )
    args = parser.parse_args()
    workdir = args.workdir.absolute()
    datasets = [d for d in DATASETS if not args.only or d["name"] in args.only]
    if args.ci or args.write_reference:
        datasets = [d for d in datasets if d.get("ci")]
    skipped = {}
    for dataset in list(datasets):
        missing = unsupported_arguments(dataset["data"])
        if missing:
            skipped[dataset["name"]] = f"generate_sample_data has no {missing}"
            datasets.remove(dataset)
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    datasets += [
        reseeded(dataset, seed) for dataset in datasets for seed in args.extra_seeds
    ]
    if args.write_reference:
        if not args.volara1_python:
            parser.error("--write-reference needs --volara1-python")
        write_references(datasets, args.volara1_python, workdir, args.workers)
        return
    pythons = {"volara2": sys.executable}
    if args.volara1_python:
        pythons = {"volara1": args.volara1_python, **pythons}
    start = time.perf_counter()
    results = []
    for dataset in datasets:
        results.append(run_dataset(dataset, pythons, workdir, args.workers))
        print(table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    output = {
        "benchmark": "parity",
        "workers": args.workers,
        "seconds": round(time.perf_counter() - start, 1),
        "skipped": skipped,
        "datasets": results,
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "parity.json").write_text(
        json.dumps(output, indent=2, default=list) + "\n"
    )
    print(table(results))
    if args.extra_seeds:
        print(means(results))
    print(
        f"\n{len(results)} datasets in {output['seconds']} s; JSON: {workdir / 'parity.json'}"
    )


if __name__ == "__main__":
    main()
