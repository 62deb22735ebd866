"""How good is a segmentation: VOI and adapted Rand error against a ground
truth, block by block, for volumes larger than memory.

Each block of the volume gives a sparse table of how many voxels each
(segment, truth object) pair shares; the tables are added up and scored
once (`volara.kernels.metrics`). Memory holds a few blocks and the pairs,
never the volume. Voxels where the ground truth is 0 (unlabelled) are not
counted, nor those where the mask, if given, is 0.

    volara-cli evaluate sample.zarr/segments sample.zarr/labels
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array, open_ds

from .datasets import Dataset, read_region
from .kernels.metrics import (
    Contingency,
    Culprit,
    block_contingency,
    contingency_scores,
    merge_contingencies,
    worst_merges,
    worst_splits,
)

BLOCK_VOXELS = 1 << 22
"""About how many voxels a block has unless a block shape is given: large
enough that reading dominates, small enough for a few in memory."""


@dataclass
class Evaluation:
    """Scores of a segmentation against a ground truth."""

    voi_split: float
    """Conditional entropy of the segmentation given the truth, in bits:
    how much truth objects are split. 0 is perfect."""
    voi_merge: float
    """Conditional entropy of the truth given the segmentation, in bits:
    how much segments merge truth objects. 0 is perfect."""
    voi: float
    """``voi_split + voi_merge``."""
    arand: float
    """Adapted Rand error (1 - the Rand F-score), 0 is perfect."""
    voxels: int
    """Voxels counted (labelled in the truth, inside the mask)."""
    truth_objects: int
    segments: int
    """Segments that overlap the counted voxels."""
    blocks: int
    worst_splits: list[dict[str, Any]] = field(default_factory=list)
    """The truth objects split the most: id, voxels, pieces (segments),
    voi (its share of voi_split), position (world units) of a voxel of its
    second-largest piece."""
    worst_merges: list[dict[str, Any]] = field(default_factory=list)
    """The segments merging the most: id, voxels, pieces (truth objects),
    voi (its share of voi_merge), position (world units) of a voxel of the
    second-largest truth object in it."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    segmentation: Dataset | Path | str,
    ground_truth: Dataset | Path | str,
    mask: Dataset | Path | str | None = None,
    block_shape: tuple[int, ...] | None = None,
    num_threads: int | None = None,
    top: int = 5,
) -> Evaluation:
    """Score ``segmentation`` against ``ground_truth`` (zarr arrays of
    labels on the same voxel grid, or their datasets), block by block.

    ``block_shape`` is in voxels (default: whole chunks of the
    segmentation, about four million voxels); ``num_threads`` blocks are
    read and tabled at a time (default: one per core); ``top`` is how many
    of the worst split and merged objects to list."""
    seg = open_labels(segmentation, "segmentation")
    truth = open_labels(ground_truth, "ground truth")
    check_same_grid(seg, truth, "ground truth")
    masks = None if mask is None else open_labels(mask, "mask")
    if masks is not None:
        check_same_grid(seg, masks, "mask")
    blocks = list(block_rois(seg, block_shape))
    table = _table(
        seg, truth, masks, blocks, num_threads or len(os.sched_getaffinity(0))
    )
    scores = contingency_scores(table)
    return Evaluation(
        voi_split=scores["voi_split"],
        voi_merge=scores["voi_merge"],
        voi=scores["voi"],
        arand=scores["adapted_rand_error"],
        voxels=int(table.counts.sum()),
        truth_objects=len(table.truth_groups.ids),
        segments=len(table.segment_groups.ids),
        blocks=len(blocks),
        worst_splits=[_in_world(c, seg) for c in worst_splits(table, top)],
        worst_merges=[_in_world(c, seg) for c in worst_merges(table, top)],
    )


def describe_evaluation(result: Evaluation) -> list[str]:
    """The scores, and where the worst errors are, as lines of text."""
    lines = [
        f"VOI split {result.voi_split:.4f}  merge {result.voi_merge:.4f}  "
        f"total {result.voi:.4f}  (bits, lower is better)",
        f"adapted Rand error {result.arand:.4f}  (0 is perfect)",
        f"{result.voxels} voxels counted: {result.truth_objects} ground-truth "
        f"objects, {result.segments} segments, {result.blocks} blocks",
    ]
    for title, culprits, pieces in [
        ("ground-truth objects split the most", result.worst_splits, "segments"),
        ("segments merging the most", result.worst_merges, "ground-truth objects"),
    ]:
        lines.append(f"{title}:" if culprits else f"{title}: none")
        lines += [
            f"  id {c['id']}: {c['voxels']} voxels in {c['pieces']} {pieces}, "
            f"VOI {c['voi']:.4f}; look at {tuple(c['position'])} (world units)"
            for c in culprits
        ]
    return lines


def open_labels(source: Dataset | Path | str, what: str) -> Array:
    """Open a label array, or say which input is missing."""
    if isinstance(source, Dataset):
        array = source.array("r")
        source = source.store
    else:
        try:
            array = open_ds(str(source), mode="r")
        except (FileNotFoundError, TypeError, ValueError) as e:
            raise FileNotFoundError(f"{what}: no zarr array at {source!s}") from e
    if array.channel_dims != 0:
        raise ValueError(
            f"{what}: {source!s} has shape {array.shape} with "
            f"{array.channel_dims} channel axes; labels have spatial axes only"
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what}: {source!s} holds {array.dtype}, not integer labels")
    return array


def check_same_grid(seg: Array, other: Array, what: str) -> None:
    """Refuse arrays that do not cover the same voxels."""
    if other.voxel_size != seg.voxel_size:
        raise ValueError(
            f"{what}: voxel size {tuple(other.voxel_size)} differs from the "
            f"segmentation's {tuple(seg.voxel_size)}"
        )
    if other.roi != seg.roi:
        raise ValueError(
            f"{what}: covers {other.roi} (shape {tuple(other.shape)} voxels), the "
            f"segmentation {seg.roi} (shape {tuple(seg.shape)} voxels); both must "
            "cover the same region"
        )


def block_rois(array: Array, block_shape: tuple[int, ...] | None) -> Iterator[Roi]:
    """The array's region cut into blocks (world units), the last ones
    cropped to the array."""
    voxels = Coordinate(block_shape) if block_shape else default_block_shape(array)
    size = voxels * array.voxel_size
    roi = array.roi
    for index in np.ndindex(
        *(-(-s // b) for s, b in zip(roi.shape, size, strict=True))
    ):
        begin = roi.offset + Coordinate(index) * size
        yield Roi(begin, size).intersect(roi)


def default_block_shape(array: Array) -> Coordinate:
    """Whole chunks, doubled along the axes of fewest chunks first until a
    block has about `BLOCK_VOXELS` voxels."""
    chunks = getattr(array._source_data, "chunks", None) or array.shape
    shape = list(chunks[-array.voxel_size.dims :])
    extent = list(array.shape[-array.voxel_size.dims :])
    while np.prod(shape) < BLOCK_VOXELS and any(
        s < e for s, e in zip(shape, extent, strict=True)
    ):
        axis = min(
            (a for a in range(len(shape)) if shape[a] < extent[a]),
            key=lambda a: shape[a] / extent[a],
        )
        shape[axis] *= 2
    return Coordinate(min(s, e) for s, e in zip(shape, extent, strict=True))


def _table(
    seg: Array, truth: Array, mask: Array | None, blocks: list[Roi], threads: int
) -> Contingency:
    def tabulate(roi: Roi) -> Contingency:
        origin = (roi.offset - seg.roi.offset) / seg.voxel_size
        return block_contingency(
            read_region(seg, roi),
            read_region(truth, roi),
            None if mask is None else read_region(mask, roi),
            tuple(origin),
        )

    merged = Contingency.empty(seg.voxel_size.dims)
    pending: list[Contingency] = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        # a few blocks in flight: memory stays at a few blocks
        in_flight: deque[Future] = deque()
        for roi in blocks:
            in_flight.append(pool.submit(tabulate, roi))
            if len(in_flight) >= 2 * threads:
                pending.append(in_flight.popleft().result())
            if sum(map(len, pending)) > max(len(merged), 1 << 20):
                merged, pending = merge_contingencies([merged, *pending]), []
        pending.extend(future.result() for future in in_flight)
    return merge_contingencies([merged, *pending])


def _in_world(culprit: Culprit, array: Array) -> dict[str, Any]:
    position = array.roi.offset + Coordinate(culprit.position) * array.voxel_size
    return {**asdict(culprit), "position": list(position)}
