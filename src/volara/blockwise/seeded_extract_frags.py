"""SeededExtractFrags: grow skeletons into segments along the affinities.

Every skeleton gets one label, the same in every block: the ``skeleton_id``
its nodes carry (as in volara 1.0.5), or, without ids, one per connected
component of the graph in ``graph_db``. Its nodes and the lines between them
are painted into each block as mutex-watershed seeds; the watershed grows
them along the affinities, and everything not connected to a seed is
dropped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, Literal

import numpy as np
from funlib.geometry import Coordinate, Roi
from pydantic import model_validator

from ..datasets import Affs, Dataset, Labels, read_region, write_region
from ..dbs import AnyDB
from ..kernels import mws as mws_kernel
from ..kernels.mutex_watershed import mutex_watershed
from ..kernels.skeletons import rasterize_skeletons, skeleton_labels
from ..utils import PydanticCoordinate
from .extract_frags import (
    check_affinity_channels,
    check_no_nan,
    check_per_offset_fields,
)
from .grid import GridTask

logger = logging.getLogger(__name__)


class SeededExtractFrags(GridTask):
    """Segments from affinities, seeded by skeletons.

    Voxels on a skeleton (its nodes and the straight lines along its edges)
    get that skeleton's label; the mutex watershed fills in the rest of each
    object from the affinities. Voxels not reached from any skeleton are 0.

    Labels are the nodes' ``skeleton_id`` attribute (an integer >= 1; give
    the database ``node_attrs={"skeleton_id": "int"}``), as in volara 1.0.5:
    seeds with ids 100 and 200 give segments 100 and 200. Connected
    components sharing an id become one segment. A component whose nodes
    carry several ids keeps each node's id, and its edges between nodes of
    different ids are not painted: the affinities decide where those
    segments meet. A node without an id (missing, ``None`` or 0) takes its
    component's id if the component carries exactly one; other components
    without ids are numbered above the largest id, by their smallest node
    id, so a graph without any ids is labelled ``1..k``, one label per
    connected component.
    """

    task_type: Literal["seeded-extract-frags"] = "seeded-extract-frags"
    affs_data: Affs
    """The affinities, channels first ``(offsets, z, y, x)``, float in [0, 1]
    or uint8 (0..255), with one channel per offset of its neighborhood."""
    segs_data: Labels
    """The output segments, uint64, on the grid of ``affs_data``."""
    graph_db: AnyDB
    """The skeletons: nodes with a ``position`` (world units), optionally a
    ``skeleton_id`` (the label), and edges between nodes of the same
    skeleton."""
    mask_data: Labels | None = None
    """Optional mask on the grid of ``affs_data``: voxels where it is 0 stay
    0, and affinities touching them are ignored."""
    bias: list[float]
    """Added to the affinities of each offset before the watershed, one value
    per offset of the neighborhood: edges with ``affinity + bias > 0`` merge,
    the others split."""
    strides: list[PydanticCoordinate] | None = None
    """Per offset, use only every n-th edge along each axis (voxels), one
    stride per offset. ``None``: all edges."""
    randomized_strides: bool = False
    """Turn each stride into a probability ``1/prod(stride)`` of keeping an
    edge, instead of a regular grid."""
    context: PydanticCoordinate
    """Extra affinities (and skeleton nodes) read around each block, in
    voxels, one value per spatial axis. Objects that a skeleton only enters
    within the context are still labelled inside the block."""
    fit: Literal["shrink"] = "shrink"
    read_write_conflict: Literal[False] = False
    worker_imports: ClassVar[tuple[str, ...]] = ("volara.kernels.mws:warm_up",)

    @model_validator(mode="after")
    def _check_per_offset_fields(self) -> SeededExtractFrags:
        check_per_offset_fields(type(self).__name__, self)
        dims = (self.affs_data.neighborhood or [])[0].dims
        if self.graph_db.ndim != dims:
            raise ValueError(
                f"{type(self).__name__}.graph_db: ndim is {self.graph_db.ndim}, the "
                f"affinities have {dims} spatial axes; set graph_db.ndim={dims}"
            )
        return self

    @property
    def task_name(self) -> str:
        return f"{self.segs_data.name}-{self.task_type}"

    @property
    def neighborhood(self) -> list[Coordinate]:
        """The affinity offsets, in voxels."""
        return list(self.affs_data.neighborhood or [])

    @property
    def grid_dataset(self) -> Dataset:
        return self.affs_data

    @property
    def context_voxels(self) -> Coordinate:
        return self.context

    @property
    def output_datasets(self) -> list[Dataset]:
        return [self.segs_data]

    def check_config(self) -> None:
        super().check_config()
        check_affinity_channels(type(self).__name__, self.affs_data)
        if self.mask_data is not None:
            self.check_same_grid("mask_data", self.mask_data)
        if not self.produced_upstream(self.affs_data.store):
            check_no_nan(type(self).__name__, self.affs_data)
        if not self.graph_db.exists():
            raise FileNotFoundError(
                f"{type(self).__name__}.graph_db: no graph database at "
                f"{self.graph_db.location}; write the skeletons there first"
            )

    def init(self) -> None:
        self.init_out_array()
        # compiled here, once, and loaded by every worker from numba's cache
        mws_kernel.warm_up()

    def init_out_array(self) -> None:
        """Prepare the output array (volara 1.0.5's name; `init` does it
        before a run)."""
        self.prepare_output(self.segs_data, np.uint64)

    @contextmanager
    def process_block_func(self) -> Iterator:
        affs = self.affs_data.array("r")
        segs = self.segs_data.array("r+")
        mask = self.mask_data.array("r") if self.mask_data is not None else None
        skeletons = _Skeletons(self)
        voxel_size = affs.voxel_size

        affs_chunks = self.chunk_cache(self.affs_data)
        mask_chunks = None
        if self.mask_data is not None:
            mask_chunks = self.chunk_cache(self.mask_data)

        def process_block(block) -> None:
            data = read_region(affs, block.read_roi, cache=affs_chunks)
            seeds = skeletons.seeds(block.read_roi, voxel_size)
            inside = None
            if mask is not None:
                inside = read_region(mask, block.read_roi, cache=mask_chunks) > 0
            begin = (block.write_roi.offset - block.read_roi.offset) / voxel_size
            end = begin + block.write_roi.shape / voxel_size
            labels = mutex_watershed(
                data,
                self.neighborhood,
                self.bias,
                strides=self.strides,
                randomized_strides=self.randomized_strides,
                seeds=seeds,
                mask=inside,
                keep_unseeded=False,
                origin=block.read_roi.offset / voxel_size,
                crop=tuple(map(slice, begin, end)),
            )
            write_region(segs, block.write_roi, labels)

        with mws_kernel.buffers_kept():
            yield process_block


def _placed(data: dict) -> bool:
    position = data.get("position")
    return position is not None and all(p is not None for p in position)


def _skeleton_ids(graph, nodes: list) -> dict:
    """The ``skeleton_id`` of every node that has one (0 and ``None``: no
    id); a value that is not a whole number from 0 to 2**64 - 1 is refused."""
    ids = {}
    for node in nodes:
        value = graph.nodes[node].get("skeleton_id")
        if value is None:
            continue
        whole = isinstance(value, int | np.integer) and not isinstance(value, bool)
        if not whole and isinstance(value, float | np.floating):
            whole = float(value).is_integer()
        if not whole or not 0 <= int(value) < 2**64:
            raise ValueError(
                f"SeededExtractFrags.graph_db: node {node} has skeleton_id "
                f"{value!r}; skeleton ids are whole numbers from 1 to 2**64 - 1 "
                "(0 or missing: no id)"
            )
        if int(value) != 0:
            ids[node] = int(value)
    return ids


class _Skeletons:
    """The whole skeleton graph as arrays, loaded on the first block (the
    labels need every component, not only the part near a block)."""

    def __init__(self, task: SeededExtractFrags):
        self.graph_db = task.graph_db
        self.lock = threading.Lock()
        self.points: np.ndarray | None = None
        self.labels = np.zeros(0, dtype=np.uint64)
        self.edges = np.zeros((0, 2), dtype=np.int64)

    def load(self) -> np.ndarray:
        with self.lock:
            if self.points is None:
                db = self.graph_db.open("r")
                try:
                    graph = db.read_graph()
                finally:
                    db.close()  # type: ignore[attr-defined]
                nodes = [n for n, data in graph.nodes(data=True) if _placed(data)]
                index = {node: i for i, node in enumerate(nodes)}
                ids = _skeleton_ids(graph, nodes)
                labels = skeleton_labels(nodes, graph.edges, ids)
                self.labels = np.array([labels[n] for n in nodes], dtype=np.uint64)
                placed = [(u, v) for u, v in graph.edges if u in index and v in index]
                painted = [(u, v) for u, v in placed if labels[u] == labels[v]]
                if len(painted) < len(placed):
                    logger.warning(
                        "%d skeleton edges join nodes of different skeleton_id "
                        "(e.g. %s); they are not painted as seeds",
                        len(placed) - len(painted),
                        next((u, v) for u, v in placed if labels[u] != labels[v]),
                    )
                self.edges = np.array(
                    [(index[u], index[v]) for u, v in painted], dtype=np.int64
                ).reshape(-1, 2)
                self.points = np.array(
                    [graph.nodes[n]["position"] for n in nodes], dtype=np.float64
                ).reshape(len(nodes), self.graph_db.ndim)
                logger.info(
                    "loaded %d skeleton nodes of %d skeletons",
                    len(nodes),
                    len(set(labels.values())),
                )
            return self.points

    def seeds(self, roi: Roi, voxel_size: Coordinate) -> np.ndarray:
        """The skeletons painted into ``roi`` (world units), on its voxels."""
        points = self.load()
        begin, end = np.asarray(roi.begin, float), np.asarray(roi.end, float)
        near = self.edges[
            np.all(
                (np.minimum(points[self.edges[:, 0]], points[self.edges[:, 1]]) < end)
                & (
                    np.maximum(points[self.edges[:, 0]], points[self.edges[:, 1]])
                    >= begin
                ),
                axis=1,
            )
        ]
        voxels = (points - begin) / np.asarray(voxel_size, float)
        return rasterize_skeletons(roi.shape / voxel_size, voxels, self.labels, near)
