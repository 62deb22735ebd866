"""Synthetic test volumes: ground-truth cells and their affinities in a zarr.

`generate_sample_data` writes, into one zarr container,

- ``labels``: uint64 cell ids (0 is background), shape ``shape``;
- ``affinities``: float32 in [0, 1], channels first, one channel per offset
  of ``neighborhood`` (stored in the array's ``neighborhood`` attribute, so
  ``Affs(store=...)`` finds it), computed from ``labels`` and then degraded
  with gaussian noise (and optionally blurred) to look like a prediction;
- ``raw`` (optional): uint8 EM-like intensities.

All arrays share one offset (default 0) and voxel size (world units, e.g.
nm). Results depend only on the arguments: the same ``seed`` gives the same
bytes. It is meant for tests, examples and benchmarks (the default shape is
the performance yardstick and takes a few seconds).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from funlib.geometry import Coordinate

from .datasets import Affs, Dataset, Labels, Raw
from .kernels.affinities import affinities_from_labels
from .kernels.synthetic import (
    add_membranes,
    noisy_affinities,
    random_cells,
    raw_from_labels,
)

logger = logging.getLogger(__name__)

DEFAULT_NEIGHBORHOOD: list[tuple[int, int, int]] = [
    (1, 0, 0),
    (0, 1, 0),
    (0, 0, 1),
    (2, 0, 0),
    (0, 8, 0),
    (0, 0, 8),
    (4, 0, 0),
    (0, 16, 0),
    (0, 0, 16),
]
"""Offsets (voxels, z/y/x) of the yardstick's affinities: direct neighbors
plus long-range offsets that reach across typical membranes."""


class SampleData(NamedTuple):
    """The datasets `generate_sample_data` wrote, ready to use in task configs."""

    labels: Labels
    affinities: Affs
    raw: Raw | None


def generate_sample_data(
    path: Path | str,
    shape: Sequence[int] = (60, 240, 240),
    voxel_size: Sequence[int] = (40, 4, 4),
    num_cells: int = 150,
    neighborhood: Sequence[Sequence[int]] = DEFAULT_NEIGHBORHOOD,
    noise: float = 0.15,
    seed: int = 0,
    blur: float = 0.0,
    membranes: bool = False,
    raw: bool = False,
    chunk_shape: Sequence[int] | None = None,
    offset: Sequence[int] | None = None,
) -> SampleData:
    """Write synthetic cells and their affinities into the zarr at ``path``.

    Args:
        path: The zarr container; ``labels``, ``affinities`` (and ``raw``)
            are written inside it.
        shape: Volume shape in voxels, one value per spatial axis.
        voxel_size: Voxel size in world units, one value per spatial axis.
        num_cells: Number of cells (Voronoi regions of random seed points,
            with smoothly bent boundaries).
        neighborhood: Affinity offsets in voxels, one per channel; any
            offsets, negative or positive.
        noise: Standard deviation of the gaussian noise added to the
            affinities (and, scaled to the grey range, to ``raw``). ``0``
            gives exact ground-truth affinities (with ``blur=0``).
        seed: Seed of every random choice.
        blur: Sigma, in voxels along every spatial axis, of a gaussian blur
            of the affinities before the noise. ``0``: no blur.
        membranes: Clear a one-voxel background seam between touching cells,
            as membranes look in EM ground truth.
        raw: Also write ``raw``, uint8 EM-like intensities.
        chunk_shape: Zarr chunk shape in voxels (spatial axes); default up
            to 64 per axis.
        offset: World coordinate of the first voxel (a multiple of
            ``voxel_size``); default 0.

    Existing arrays of the same layout are overwritten; arrays of another
    shape, chunking or voxel size are an error (delete them first).
    """
    shape = tuple(int(s) for s in shape)
    voxel_size = Coordinate(voxel_size)
    neighborhood = [tuple(int(o) for o in offset) for offset in neighborhood]
    _check_arguments(shape, voxel_size, neighborhood, noise, blur)
    chunks = (
        tuple(chunk_shape)
        if chunk_shape is not None
        else tuple(min(s, 64) for s in shape)
    )
    rng = np.random.default_rng(seed)

    labels = random_cells(shape, voxel_size, num_cells, rng)
    if membranes:
        labels = add_membranes(labels)
    affs = noisy_affinities(
        affinities_from_labels(labels, neighborhood), noise, rng, blur
    )

    path = Path(path)
    layout = dict(
        offset=tuple(offset) if offset is not None else (0,) * len(shape),
        voxel_size=voxel_size,
        units=["nm"] * len(shape),
    )
    labels_ds = Labels(store=path / "labels")
    _write(labels_ds, labels, chunks, layout)
    affs_ds = Affs(
        store=path / "affinities", neighborhood=[Coordinate(o) for o in neighborhood]
    )
    _write(affs_ds, affs, chunks, layout)
    raw_ds = None
    if raw:
        raw_ds = Raw(store=path / "raw")
        _write(raw_ds, raw_from_labels(labels, noise, rng), chunks, layout)
    logger.info("wrote sample data %s: %d cells, shape %s", path, num_cells, shape)
    return SampleData(labels=labels_ds, affinities=affs_ds, raw=raw_ds)


def _check_arguments(shape, voxel_size, neighborhood, noise, blur) -> None:
    if voxel_size.dims != len(shape):
        raise ValueError(
            f"voxel_size {tuple(voxel_size)} needs one value per axis of shape {shape}"
        )
    bad = [offset for offset in neighborhood if len(offset) != len(shape)]
    if bad or not neighborhood:
        raise ValueError(
            f"neighborhood needs at least one offset, each with {len(shape)} values "
            f"(one per axis of shape {shape}); got {neighborhood}"
        )
    if noise < 0 or blur < 0:
        raise ValueError(f"noise ({noise}) and blur ({blur}) must not be negative")


def _write(dataset: Dataset, data: np.ndarray, chunks: tuple, layout: dict) -> None:
    channels = data.shape[: data.ndim - len(chunks)]
    spatial = ["z", "y", "x"][-len(chunks) :] if len(chunks) <= 3 else None
    axis_names = None
    if spatial is not None:
        axis_names = [f"c{i}^" for i in range(len(channels))] + spatial
    dataset.prepare(
        shape=data.shape,
        chunk_shape=(*channels, *chunks),
        axis_names=axis_names,
        types=["channel"] * len(channels) + ["space"] * len(chunks),
        dtype=data.dtype,
        **layout,
    )
    array = dataset.array("r+")
    array[array.roi] = data
