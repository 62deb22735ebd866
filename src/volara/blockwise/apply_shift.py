"""ApplyShift: warp a volume by per-block shift vectors (e.g. from
`ComputeShift`).

The vectors are taken to sit at the centres of their blocks and are
interpolated linearly in between, so the displacement changes smoothly
through the volume instead of jumping at block borders. Blocks of this task
are the cells of the shift array; each reads the shifts of the cells around
it, so neighbouring blocks interpolate (and fill ignored shifts) from the
same values and their results meet without seams.
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

from ..datasets import Dataset, Raw
from ..kernels.shift import (
    fill_ignored_shifts,
    grid_points,
    ignored_shifts,
    interpolate_shifts,
    warp,
)
from .blockwise import BlockwiseTask

SHIFT_CONTEXT_CELLS = 2
"""Shift cells read on each side of a block: one for the interpolation
between cell centres, one more for the neighbours that fill ignored cells."""


class ApplyShift(BlockwiseTask):
    """Write ``aligned(x) = intensities(x - shift(x))``, where ``shift(x)`` is
    interpolated from the per-block vectors of `shifts` (world units).

    Sources outside `intensities` read as 0. Shifts of any size can be
    applied; each block reads as much of `intensities` as its largest shift
    needs.
    """

    task_type: Literal["apply_shifts"] = "apply_shifts"
    intensities: Raw
    """The volume to warp: one channel (``(z, y, x)``) or several
    (``(c, z, y, x)``), each warped by its own shifts."""
    shifts: Raw
    """One shift vector per block, in world units, as written by
    `ComputeShift`: ``(c, dims, *blocks)`` for intensities with ``c``
    channels, ``(dims, *blocks)`` without a channel axis. Its voxel size is
    the size of a block (in world units) and must be a multiple of the voxel
    size of `intensities`; this task's blocks have that size."""
    aligned: Raw
    """The output: the warped volume, on the grid of `intensities`, with the
    same shape and dtype (integers are rounded)."""
    fit: Literal["overhang"] = "overhang"
    read_write_conflict: Literal[False] = False
    interp_shifts: Raw | None = None
    """Optional output: the shift applied at every voxel, in world units,
    float32, shaped ``(c, dims, z, y, x)`` (``(dims, z, y, x)`` without a
    channel axis). ``None``: not written."""
    shift_threshold: float | None = Field(default=None, ge=0)
    """Ignore shift vectors longer than this (Euclidean length, in world
    units), e.g. failed registrations of blocks without texture. An ignored
    vector is replaced by the mean of the trusted vectors of its neighbouring
    blocks (zero if there are none). ``None``: trust every vector."""

    @property
    def task_name(self) -> str:
        return f"{self.aligned.name}-{self.task_type}"

    @property
    def output_datasets(self) -> list[Dataset]:
        outputs: list[Dataset] = [self.aligned]
        if self.interp_shifts is not None:
            outputs.append(self.interp_shifts)
        return outputs

    # ------------------------------------------------------------- geometry

    @property
    def intensities_array(self) -> Array:
        return self.intensities.array("r")

    @property
    def shifts_array(self) -> Array:
        return self.shifts.array("r")

    @property
    def voxel_size(self) -> Coordinate:
        """Voxel size of `intensities` (and `aligned`), in world units."""
        return self.intensities_array.voxel_size

    @property
    def block_size(self) -> Coordinate:
        """Size of a block, in voxels: one cell of `shifts`."""
        return self.shifts_array.voxel_size / self.voxel_size

    @property
    def context(self) -> Coordinate:
        """Context read around each block for its shifts, in voxels."""
        return self.block_size * SHIFT_CONTEXT_CELLS

    @property
    def write_roi(self) -> Roi:
        total = self.intensities_array.roi
        if self.roi is not None:
            total = total.intersect(self.roi).snap_to_grid(
                self.voxel_size, mode="shrink"
            )
        return total

    @property
    def write_size(self) -> Coordinate:
        return self.shifts_array.voxel_size

    @property
    def context_size(self) -> Coordinate:
        # what daisy makes a block wait for in a pipeline: the shift cells
        # it reads, not the intensities (they are an input, not upstream)
        return self.write_size * SHIFT_CONTEXT_CELLS

    @property
    def channel_shape(self) -> tuple[int, ...]:
        """The channel axes of `intensities` (empty for a plain volume)."""
        array = self.intensities_array
        return tuple(int(size) for size in array.shape[: array.channel_dims])

    # ------------------------------------------------------------- checks

    def check_config(self) -> None:
        intensities = self._open_input("intensities")
        shifts = self._open_input("shifts")
        dims = intensities.voxel_size.dims
        if shifts.voxel_size.dims != dims:
            raise ValueError(
                f"ApplyShift.shifts: {self.shifts.store!s} has "
                f"{shifts.voxel_size.dims} spatial axes, intensities "
                f"{self.intensities.store!s} has {dims}"
            )
        expected = (*self.channel_shape, dims)
        found = tuple(int(s) for s in shifts.shape[: shifts.channel_dims])
        if found != expected:
            raise ValueError(
                f"ApplyShift.shifts: {self.shifts.store!s} has shape {shifts.shape}, "
                f"i.e. channel axes {found}; expected {expected}: one vector of "
                f"{dims} components per block for each channel of intensities "
                f"(shape {intensities.shape}). Compute the shifts of these "
                "intensities with ComputeShift."
            )
        cell = shifts.voxel_size
        if cell % intensities.voxel_size != Coordinate((0,) * dims):
            raise ValueError(
                f"ApplyShift.shifts: its voxel size {tuple(cell)} (the block size "
                "in world units) is not a multiple of the voxel size "
                f"{tuple(intensities.voxel_size)} of intensities "
                f"{self.intensities.store!s}; were the shifts computed on these "
                "intensities?"
            )
        if self.roi is not None and self.roi.dims != dims:
            raise ValueError(
                f"ApplyShift.roi has {self.roi.dims} dimensions; the data has {dims}"
            )

    def _open_input(self, field: Literal["intensities", "shifts"]) -> Array:
        dataset = getattr(self, field)
        if not dataset.exists():
            raise FileNotFoundError(
                f"ApplyShift.{field}: no zarr array at {dataset.store!s}. Check "
                "the path, or run the task that writes it first."
            )
        return dataset.array("r")

    # -------------------------------------------------------------- outputs

    def init(self) -> None:
        self.init_out_array()

    def init_out_array(self) -> None:
        """Prepare ``aligned`` (and ``interp_shifts`` if set) (volara 1.0.5's
        name; `init` does it before a run)."""
        template = self.intensities_array
        channels = self.channel_shape
        self._prepare(self.aligned, template.dtype, channels, [])
        if self.interp_shifts is not None:
            self._prepare(self.interp_shifts, np.float32, channels, ["axis^"])

    def _prepare(
        self,
        dataset: Dataset,
        dtype: np.dtype | type,
        channels: tuple[int, ...],
        vector_axis: list[str],
    ) -> None:
        template = self.intensities_array
        dims = self.voxel_size.dims
        vector = [dims] if vector_axis else []
        dataset.prepare(
            shape=(*channels, *vector, *(self.write_roi.shape / self.voxel_size)),
            chunk_shape=(*channels, *vector, *self.block_size),
            offset=self.write_roi.offset,
            voxel_size=self.voxel_size,
            units=list(template.units[-dims:]),
            axis_names=[*template.axis_names[: len(channels)], *vector_axis]
            + list(template.axis_names[-dims:]),
            types=["channel"] * (len(channels) + len(vector))
            + list(template.types[-dims:]),
            dtype=np.dtype(dtype),
        )

    # --------------------------------------------------------------- blocks

    @contextmanager
    def process_block_func(self) -> Iterator:
        intensities = self.intensities_array
        shifts = self.shifts_array
        aligned = self.aligned.array("r+")
        interp = self.interp_shifts.array("r+") if self.interp_shifts else None
        channels, threshold = self.channel_shape, self.shift_threshold
        grid = self.voxel_size
        voxel_size = np.asarray(grid, dtype=np.float64)
        dims = grid.dims
        num_channels = math.prod(channels)

        def process_block(block) -> None:
            write_roi = block.write_roi.intersect(aligned.roi)
            if write_roi.empty:
                return
            block_shape = tuple(write_roi.shape / grid)
            window, points = shift_window(shifts, write_roi, voxel_size)
            vectors = shifts.to_ndarray(window).reshape(
                num_channels, dims, *window.shape / shifts.voxel_size
            )
            field = np.stack(
                [
                    interpolate_shifts(
                        fill_ignored_shifts(v, ignored_shifts(v, threshold)), points
                    )
                    for v in vectors
                ]
            )
            aligned[write_roi] = warp_channels(
                intensities, write_roi, field, voxel_size
            ).reshape(*channels, *block_shape)
            if interp is not None:
                interp[write_roi] = field.reshape(*channels, dims, *block_shape).astype(
                    np.float32
                )

        yield process_block

    @staticmethod
    def apply_shift(
        intensities: np.ndarray,
        shifts: np.ndarray,
        voxel_write_roi: Roi,
        voxel_size: np.ndarray,
        shift_threshold: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Warp one block in memory (volara 1.0.5's per-block function).

        ``shifts`` holds the shift vectors (world units) of a window of
        blocks, ``(c, dims, *cells)`` (volara 1.0.5: ``(c, 3, 3, 3, 3)``, the
        block and its neighbours), and ``intensities`` (``(c, *spatial)``)
        the voxels of the same window. The block written is the one in the
        middle of the window, of shape ``voxel_write_roi.shape`` (voxels).

        Returns ``(aligned, interpolated_shifts)``: the block warped as
        `ApplyShift` warps it, in the dtype of ``intensities``, shaped
        ``(c, *block)``, and the shift applied at each voxel (world units,
        float32), ``(c, dims, *block)``. Shifts longer than
        ``shift_threshold`` are ignored and filled from their neighbours, as
        the task does (volara 1.0.5 set them to zero).
        """
        intensities = np.asarray(intensities)
        voxel_size = np.asarray(voxel_size, dtype=np.float64)
        dims = len(voxel_size)
        shifts = np.asarray(shifts)
        cells = shifts.shape[-dims:]
        channels = intensities.shape[:-dims]
        window_shape = np.asarray(intensities.shape[-dims:])
        block_shape = tuple(int(s) for s in voxel_write_roi.shape)
        cell_shape = window_shape / np.asarray(cells)
        offset = (window_shape - np.asarray(block_shape)) // 2
        # voxel centres in cell units (cell i centred at i)
        points = grid_points(
            block_shape, (offset + 0.5) / cell_shape - 0.5, 1 / cell_shape
        )
        vectors = shifts.reshape(-1, dims, *cells)
        images = intensities.reshape(-1, *window_shape)
        aligned, interpolated = [], []
        for image, grid in zip(images, vectors, strict=True):
            filled = fill_ignored_shifts(grid, ignored_shifts(grid, shift_threshold))
            field = interpolate_shifts(filled, points)
            scale = voxel_size.reshape(dims, *(1,) * dims)
            aligned.append(warp(image, field / scale, tuple(int(o) for o in offset)))
            interpolated.append(field.astype(np.float32))
        return (
            np.stack(aligned).reshape(*channels, *block_shape),
            np.stack(interpolated).reshape(*channels, dims, *block_shape),
        )


def shift_window(
    shifts: Array, write_roi: Roi, voxel_size: np.ndarray
) -> tuple[Roi, np.ndarray]:
    """The cells of ``shifts`` a block needs, as a world-unit ROI, and the
    positions of the block's voxel centres in cell units of that window
    (cell ``i`` of the window centred at ``i``)."""
    cell = np.asarray(shifts.voxel_size, dtype=np.float64)
    origin = np.asarray(shifts.roi.offset, dtype=np.float64)
    num_cells = np.asarray(shifts.roi.shape / shifts.voxel_size)
    block_shape = np.asarray(write_roi.shape) / voxel_size
    first_centre = np.asarray(write_roi.offset) + voxel_size / 2
    start = (first_centre - origin) / cell - 0.5
    step = voxel_size / cell
    end = start + (block_shape - 1) * step
    # one cell more than the interpolation needs on each side, for the
    # neighbours that fill ignored cells
    low = np.clip(np.floor(start).astype(int) - 1, 0, num_cells - 1)
    high = np.clip(np.ceil(end).astype(int) + 1, 0, num_cells - 1)
    window = Roi(
        Coordinate(int(v) for v in origin + low * cell),
        Coordinate(int(v) for v in (high - low + 1) * cell),
    )
    points = grid_points(tuple(int(s) for s in block_shape), start - low, step)
    return window, points


def warp_channels(
    intensities: Array, write_roi: Roi, field: np.ndarray, voxel_size: np.ndarray
) -> np.ndarray:
    """Warp every channel of ``intensities`` in ``write_roi`` by its shift
    field (``(channels, dims, *block)``, world units); ``(channels,
    *block)``."""
    dims = len(voxel_size)
    grid = Coordinate(int(v) for v in voxel_size)
    field_voxels = field / voxel_size.reshape(1, dims, *(1,) * dims)
    block_shape = np.asarray(field.shape[2:])
    # only the region the shifted samples come from is read, cut to the
    # volume: a bogus shift far out of it reads nothing instead of a huge
    # block of zeros
    vector_axes = (0, *range(2, field.ndim))
    low = np.floor(-field_voxels.max(axis=vector_axes)).astype(int) - 1
    high = np.ceil(block_shape - 1 - field_voxels.min(axis=vector_axes)).astype(int)
    source_roi = Roi(
        write_roi.offset + Coordinate(int(v) for v in low) * grid,
        Coordinate(int(v) for v in high + 2 - low) * grid,
    ).intersect(intensities.roi)
    if source_roi.empty:
        return np.zeros((field.shape[0], *block_shape), dtype=intensities.dtype)
    source = intensities.to_ndarray(source_roi)
    source = source.reshape(-1, *source.shape[-dims:])
    offset = tuple((write_roi.offset - source_roi.offset) / grid)
    return np.stack(
        [
            warp(channel, shifts, offset)
            for channel, shifts in zip(source, field_voxels, strict=True)
        ]
    )
