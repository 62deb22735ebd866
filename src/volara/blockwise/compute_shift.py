"""ComputeShift: how far each block of a volume is displaced from a target.

Every block of `intensities` (with `context`) is registered onto the same
region of `target` by cross-correlation in Fourier space; the resulting
translation is written as one vector per block into `shifts`, a coarse array
whose voxels are the blocks. `ApplyShift` warps the volume by these vectors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array
from pydantic import Field

from ..datasets import Dataset, Labels, Raw
from ..kernels.shift import measure_channel_shifts
from ..utils import PydanticCoordinate
from .grid import GridTask


class ComputeShift(GridTask):
    """Measure, per block, the translation that moves `intensities` onto
    `target`, in world units.

    The vector written for a block is the shift ``s`` such that what sits at
    world position ``p`` in `intensities` sits at ``p + s`` in `target`
    (`ApplyShift` computes ``aligned(x) = intensities(x - s)``). Without a
    mask the shift is measured to a tenth of a voxel; with a mask, to whole
    voxels. Blocks without texture, or whose mask is empty, get a zero shift.
    """

    task_type: Literal["compute_shift"] = "compute_shift"
    intensities: Raw
    """The moving image: one channel (``(z, y, x)``) or several
    (``(c, z, y, x)``), each registered on its own."""
    shifts: Raw
    """The output: one shift vector per block and channel, float32, in world
    units, shaped ``(c, dims, *blocks)`` (``(dims, *blocks)`` for
    single-channel intensities without a channel axis). Its voxel size is the
    block size in world units and its offset the processed region's."""
    block_size: PydanticCoordinate
    """Size of the region each shift is measured for, in voxels, one value
    per spatial axis. Large enough to hold plenty of texture, small enough
    that the displacement is about constant inside."""
    context: PydanticCoordinate
    """Extra voxels read around each block for the registration, one value
    per spatial axis. The registration sees ``block_size + 2 * context``
    voxels; shifts larger than half of that cannot be measured."""
    mask: Labels | None = None
    """Where the images hold valid data (nonzero), on the grid of
    `intensities`. Only masked voxels are compared; blocks with an empty mask
    get a zero shift. ``None``: every voxel counts."""
    overlap_ratio: float | None = Field(default=None, gt=0, le=1)
    """With a `mask`: the least fraction of the mask that must still overlap
    after shifting for a shift to be considered. Lower values allow larger
    shifts but trust smaller overlaps. ``None``: 0.3. Ignored without a
    mask."""
    target: Raw | None = None
    """The fixed image, one channel, on the grid of `intensities`. ``None``:
    channel 0 of `intensities` is the target (its own shift is then zero)."""
    fit: Literal["overhang"] = "overhang"
    read_write_conflict: Literal[False] = False

    @property
    def task_name(self) -> str:
        return f"{self.shifts.name}-{self.task_type}"

    @property
    def grid_dataset(self) -> Dataset:
        return self.intensities

    @property
    def context_voxels(self) -> Coordinate:
        return self.context

    @property
    def output_datasets(self) -> list[Dataset]:
        return [self.shifts]

    @property
    def channel_shape(self) -> tuple[int, ...]:
        """The channel axes of `intensities` (empty for a plain volume)."""
        array = self.grid_array
        return tuple(int(size) for size in array.shape[: array.channel_dims])

    @staticmethod
    def compute_shift(
        array: np.ndarray,
        target_data: np.ndarray,
        voxel_size: np.ndarray,
        mask: np.ndarray | None = None,
        overlap_ratio: float | None = None,
    ) -> np.ndarray:
        """The shift of every channel of ``array`` (``(c, *spatial)``) onto
        ``target_data`` (``spatial``, or ``(1, *spatial)``), in world units
        (``voxel_size``: one value per spatial axis), shaped ``(c, dims, 1,
        ..., 1)``: one block's entry of `shifts` (volara 1.0.5's method; the
        blocks compute the same). ``mask`` and ``overlap_ratio`` as the
        fields of the same names; an empty mask gives zeros."""
        array = np.asarray(array)
        target_data = np.asarray(target_data)
        spatial = array.shape[1:]
        if target_data.shape == (1, *spatial):
            target_data = target_data[0]
        if target_data.shape != spatial:
            raise ValueError(
                f"ComputeShift.compute_shift: target_data has shape "
                f"{target_data.shape}; expected {spatial} or {(1, *spatial)}, the "
                f"shape of one channel of array {array.shape}"
            )
        shifts = measure_channel_shifts(
            array, target_data, list(np.asarray(voxel_size)), mask, overlap_ratio
        )
        return shifts.reshape(*shifts.shape, *(1,) * len(spatial))

    # ------------------------------------------------------------- checks

    def check_config(self) -> None:
        super().check_config()
        array = self.grid_array
        if array.channel_dims > 1:
            raise ValueError(
                f"ComputeShift.intensities: {self.intensities.store!s} has "
                f"{array.channel_dims} channel axes (shape {array.shape}); give at "
                "most one, channels first"
            )
        if self.target is None:
            if math.prod(self.channel_shape) < 2:
                raise ValueError(
                    "ComputeShift.target: not given, and intensities "
                    f"{self.intensities.store!s} has a single channel, so there is "
                    "nothing to register it to. Give a target, or put the "
                    "reference as channel 0 of intensities."
                )
        else:
            self._check_single_channel("target", self._open_input("target"))
        if self.mask is not None:
            mask = self._open_input("mask")
            if mask.channel_dims > 0:
                raise ValueError(
                    f"ComputeShift.mask: {self.mask.store!s} has channel axes "
                    f"(shape {mask.shape}); the mask must be a plain volume"
                )

    def _open_input(self, field: Literal["target", "mask"]) -> Array:
        dataset = getattr(self, field)
        if not dataset.exists():
            raise FileNotFoundError(
                f"ComputeShift.{field}: no zarr array at {dataset.store!s}. Check "
                "the path, or run the task that writes it first."
            )
        return self.check_same_grid(field, dataset)

    def _check_single_channel(self, field: str, array: Array) -> None:
        if array.channel_dims > 0 and math.prod(array.shape[: array.channel_dims]) > 1:
            raise ValueError(
                f"ComputeShift.{field}: {getattr(self, field).store!s} has shape "
                f"{array.shape}; it must hold a single channel (select one with "
                "Raw.channels)"
            )

    # -------------------------------------------------------------- output

    def init(self) -> None:
        self.init_out_array()

    def init_out_array(self) -> None:
        """Prepare ``shifts`` (volara 1.0.5's name; `init` does it before a
        run)."""
        template = self.grid_array
        dims = self.voxel_size.dims
        blocks = self.write_roi.shape.ceil_division(self.write_size)
        channels = self.channel_shape
        self.shifts.prepare(
            shape=(*channels, dims, *blocks),
            # one chunk per block: blocks running at once never share a chunk
            chunk_shape=(*channels, dims, *(1,) * dims),
            offset=self.write_roi.offset,
            voxel_size=self.write_size,
            units=list(template.units[-dims:]),
            axis_names=[
                *template.axis_names[: len(channels)],
                "axis^",
                *template.axis_names[-dims:],
            ],
            types=[*(["channel"] * (len(channels) + 1)), *template.types[-dims:]],
            dtype=np.float32,
        )

    # --------------------------------------------------------------- blocks

    def _readable_roi(self, arrays: list[Array]) -> Roi:
        """Where every input has data: a block reads only inside it."""
        roi = arrays[0].roi
        for array in arrays[1:]:
            roi = roi.intersect(array.roi)
        return roi

    @contextmanager
    def process_block_func(self) -> Iterator:
        intensities = self.intensities.array("r")
        target = self.target.array("r") if self.target is not None else None
        mask = self.mask.array("r") if self.mask is not None else None
        shifts = self.shifts.array("r+")
        readable = self._readable_roi(
            [a for a in (intensities, target, mask) if a is not None]
        )
        voxel_size, overlap_ratio = self.voxel_size, self.overlap_ratio
        dims = voxel_size.dims
        vector_shape = (*self.channel_shape, dims, *(1,) * dims)

        def process_block(block) -> None:
            read_roi = block.read_roi.intersect(readable)
            moving = intensities.to_ndarray(read_roi)
            spatial_shape = moving.shape[-dims:]
            moving = moving.reshape(-1, *spatial_shape)
            reference = (
                moving[0]
                if target is None
                else target.to_ndarray(read_roi).reshape(spatial_shape)
            )
            valid = None if mask is None else mask.to_ndarray(read_roi)
            vectors = measure_channel_shifts(
                moving, reference, voxel_size, valid, overlap_ratio
            )
            shifts[block.write_roi] = vectors.reshape(vector_shape).astype(np.float32)

        yield process_block
