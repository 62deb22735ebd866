"""Tasks whose blocks tile the voxel grid of one input array.

Most tasks read an array and write arrays (or graph nodes) on the same grid:
the total region is the input's region (cut to `roi`), block size and
context are given in voxels, and outputs are prepared with the input's voxel
size, offset and units, chunked by block. That shared work lives here once.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array

from ..datasets import Dataset
from ..utils import PydanticCoordinate
from .blockwise import BlockwiseTask


class GridTask(BlockwiseTask):
    """A `BlockwiseTask` over the voxel grid of `grid_dataset`."""

    block_size: PydanticCoordinate
    """Size of the region each block writes, in voxels, one value per spatial
    axis. Output arrays are chunked by it."""

    @property
    @abstractmethod
    def grid_dataset(self) -> Dataset:
        """The input whose voxel grid and extent the blocks follow."""

    @property
    def grid_array(self) -> Array:
        return self.grid_dataset.array("r")

    @property
    def voxel_size(self) -> Coordinate:
        """Voxel size of the grid, in world units."""
        return self.grid_array.voxel_size

    @property
    def context_voxels(self) -> Coordinate:
        """Context read around each block, in voxels (none by default)."""
        return Coordinate((0,) * self.block_size.dims)

    @property
    def write_roi(self) -> Roi:
        total = self.grid_array.roi
        if self.roi is not None:
            total = total.intersect(self.roi)
            # funlib snaps an empty region to an unbounded one
            if not total.empty:
                total = total.snap_to_grid(self.voxel_size, mode="shrink")
        return total

    @property
    def write_size(self) -> Coordinate:
        return self.block_size * self.voxel_size

    @property
    def context_size(self) -> Coordinate:
        return self.context_voxels * self.voxel_size

    def check_config(self) -> None:
        array = self.grid_array
        name = type(self).__name__
        if self.block_size.dims != array.voxel_size.dims:
            raise ValueError(
                f"{name}.block_size {tuple(self.block_size)} has "
                f"{self.block_size.dims} values; {self.grid_dataset.store!s} has "
                f"{array.voxel_size.dims} spatial axes"
            )
        if self.context_voxels.dims != array.voxel_size.dims:
            raise ValueError(
                f"{name}.context {tuple(self.context_voxels)} has "
                f"{self.context_voxels.dims} values; {self.grid_dataset.store!s} has "
                f"{array.voxel_size.dims} spatial axes"
            )
        if self.roi is not None and self.roi.dims != array.voxel_size.dims:
            raise ValueError(
                f"{name}.roi has {self.roi.dims} dimensions; the data has "
                f"{array.voxel_size.dims}"
            )

    def check_same_grid(self, field: str, dataset: Dataset) -> Array:
        """Open ``dataset`` and make sure it has the grid's voxel size and
        covers the write region; returns the opened array."""
        array = dataset.array("r")
        name = type(self).__name__
        if array.voxel_size != self.voxel_size:
            raise ValueError(
                f"{name}.{field}: voxel size {tuple(array.voxel_size)} of "
                f"{dataset.store!s} differs from {tuple(self.voxel_size)} of "
                f"{self.grid_dataset.store!s}; resample one of them first"
            )
        if not array.roi.contains(self.write_roi):
            raise ValueError(
                f"{name}.{field}: {dataset.store!s} covers {array.roi}, which does not "
                f"contain the region to process {self.write_roi}"
            )
        return array

    def prepare_output(
        self,
        dataset: Dataset,
        dtype: Any,
        channels: Sequence[int] = (),
        channel_names: Sequence[str] | None = None,
    ) -> None:
        """Prepare ``dataset`` on the grid: the write region, chunked by
        block, with leading channel axes of the sizes in ``channels``."""
        prepare_like(
            dataset,
            self.grid_array,
            self.write_roi,
            self.block_size,
            dtype,
            channels,
            channel_names,
        )


def prepare_like(
    dataset: Dataset,
    template: Array,
    write_roi: Roi,
    chunk_voxels: Coordinate,
    dtype: Any,
    channels: Sequence[int] = (),
    channel_names: Sequence[str] | None = None,
    channel_types: Sequence[str] | None = None,
) -> None:
    """Prepare ``dataset`` to cover ``write_roi`` (world units) on the voxel
    grid of ``template`` (its voxel size, units and spatial axis names),
    chunked by ``chunk_voxels``, with leading channel axes of the sizes in
    ``channels``."""
    voxel_size = template.voxel_size
    spatial_dims = voxel_size.dims
    if channel_names is None:
        channel_names = [f"c{i}^" for i in range(len(channels))]
    if channel_types is None:
        channel_types = ["channel"] * len(channels)
    dataset.prepare(
        shape=(*channels, *(write_roi.shape / voxel_size)),
        chunk_shape=(*channels, *chunk_voxels),
        offset=write_roi.offset,
        voxel_size=voxel_size,
        units=list(template.units[-spatial_dims:]),
        axis_names=[*channel_names, *template.axis_names[-spatial_dims:]],
        types=[*channel_types, *template.types[-spatial_dims:]],
        dtype=np.dtype(dtype),
    )
