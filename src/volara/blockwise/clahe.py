"""CLAHE: contrast-limited adaptive histogram equalization, block by block
and without seams between blocks."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import dask
import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array
from pydantic import Field, field_validator
from skimage.exposure.exposure import DTYPE_RANGE

from ..datasets import Dataset, Raw
from ..kernels.contrast import (
    equalize_grey_levels,
    exact_read_region,
    grey_levels_to_uint8,
    to_grey_levels,
)
from ..utils import PydanticCoordinate
from .grid import GridTask

RANGE_ATTRIBUTE = "clahe_in_range"
"""Output attribute holding the intensity range per channel that ``"image"``
resolved to (written before any block runs, read by every worker)."""

IntensityRange = tuple[float, float]

TYPE_RANGES: dict[str, IntensityRange] = {
    str(name): (float(low), float(high))
    for name, (low, high) in DTYPE_RANGE.items()
    if isinstance(name, str)
}
"""The ranges ``in_range`` may name, e.g. ``"uint8"``: skimage's."""


class CLAHE(GridTask):
    """Equalize local contrast with CLAHE (skimage's algorithm) and write the
    result as uint8.

    Each block reads, around itself, the CLAHE tiles its voxels depend on, so
    the output is the same as equalizing the whole volume at once: no seams
    between blocks."""

    task_type: Literal["clahe"] = "clahe"
    in_arr: Raw
    """The intensities to equalize. Channel axes (first) are equalized one
    channel at a time."""
    out_arr: Raw
    """The output, uint8 (0 to 255), on the grid of ``in_arr`` and with its
    channel axes."""
    mask_arr: Raw | None = None
    """Optional mask on the grid of ``in_arr``. Where it is 0 (and outside
    its extent) the input counts as its darkest value (the low end of
    ``in_range``) in the histograms, as in volara 1; the output there is
    still written. ``None``: no mask."""
    kernel: PydanticCoordinate
    """Size of the CLAHE tiles, in voxels, one value per spatial axis:
    contrast is equalized over regions of about this size. Each block reads
    context around itself up to the next tile boundary plus one whole tile
    (at most ``2 * kernel - 1`` voxels per side; exactly ``kernel`` when
    ``block_size`` is a multiple of ``kernel``, the cheapest choice)."""
    clip_limit: float = Field(default=0.01, ge=0)
    """Caps each histogram bin at this fraction of a tile's voxels; higher
    values give more contrast. 0 (or 1 and above) caps nothing: plain
    adaptive histogram equalization."""
    in_range: list[IntensityRange] | IntensityRange | str = "image"
    """The input intensities mapped to black and white before equalizing;
    values outside are clipped. In intensity units of ``in_arr`` as read
    (after ``Raw.channels`` and ``Raw.scale_shift``).

    - ``"image"`` (default): minimum and maximum of the whole input, per
      channel, found by reading the input once before any block runs (and
      stored in the output's ``clahe_in_range`` attribute). volara 1 used each
      block's own range instead, which made block seams visible. Give the
      range to skip that pass over a big volume.
    - ``[low, high]``: one range for every channel.
    - ``[[low, high], ...]``: one range per channel.
    - ``"dtype"``, or a type name such as ``"uint8"`` or ``"uint12"``: that
      type's range (skimage's convention: floats are -1 to 1)."""
    fit: Literal["overhang"] = "overhang"
    read_write_conflict: Literal[False] = False

    @field_validator("kernel")
    @classmethod
    def _positive_kernel(cls, kernel: Coordinate) -> Coordinate:
        if any(k < 1 for k in kernel):
            raise ValueError(f"kernel must be at least 1 voxel per axis, got {kernel}")
        return kernel

    @field_validator("in_range")
    @classmethod
    def _known_range(cls, in_range: Any) -> Any:
        if isinstance(in_range, str):
            named = ["image", "dtype", *TYPE_RANGES]
            if in_range not in named:
                raise ValueError(
                    f"in_range {in_range!r} is not one of {', '.join(named)}, "
                    "nor a [low, high] pair"
                )
            return in_range
        ranges = [in_range] if isinstance(in_range, tuple) else in_range
        if not ranges:
            raise ValueError("in_range is an empty list: give [low, high] per channel")
        for low, high in ranges:
            if not low < high:
                raise ValueError(f"in_range [{low}, {high}]: low must be below high")
        return in_range

    @property
    def task_name(self) -> str:
        return f"{self.out_arr.name}-{self.task_type}"

    @property
    def grid_dataset(self) -> Dataset:
        return self.in_arr

    @property
    def context_voxels(self) -> Coordinate:
        return self.kernel * 2 - 1

    @property
    def output_datasets(self) -> list[Dataset]:
        return [self.out_arr]

    @property
    def num_channels(self) -> int:
        """Channels equalized one by one (all channel axes together)."""
        array = self.grid_array
        return math.prod(array.shape[: array.channel_dims])

    def check_config(self) -> None:
        # before the base's checks, which would report the context derived
        # from the kernel instead
        spatial_dims = self.voxel_size.dims
        if self.kernel.dims != spatial_dims:
            raise ValueError(
                f"CLAHE.kernel {tuple(self.kernel)} has {self.kernel.dims} values; "
                f"{self.in_arr.store!s} has {spatial_dims} spatial axes"
            )
        super().check_config()
        if isinstance(self.in_range, list) and len(self.in_range) != self.num_channels:
            raise ValueError(
                f"CLAHE.in_range has {len(self.in_range)} ranges; {self.in_arr.store!s} "
                f"has {self.num_channels} channels. Give one [low, high] per channel, "
                "or a single [low, high] for all"
            )
        dtype = self.grid_array.dtype
        if self.in_range == "dtype" and dtype.name not in TYPE_RANGES:
            raise ValueError(
                f"CLAHE.in_range: 'dtype' has no range for {dtype} data; give "
                "[low, high]"
            )
        if self.in_range == "image" and self.produced_upstream(self.in_arr.store):
            raise ValueError(
                "CLAHE.in_range: 'image' needs the whole input before any block "
                f"runs, but {self.in_arr.store!s} is written by an earlier task of "
                "this pipeline. Give the range explicitly, e.g. [0, 255]"
            )
        if self.mask_arr is not None:
            mask = self.check_same_grid("mask_arr", self.mask_arr)
            if math.prod(mask.shape[: mask.channel_dims]) != 1:
                raise ValueError(
                    f"CLAHE.mask_arr: {self.mask_arr.store!s} has channels (shape "
                    f"{mask.shape}); give a single-channel mask"
                )

    def init(self) -> None:
        array = self.grid_array
        self.prepare_output(
            self.out_arr, np.uint8, channels=array.shape[: array.channel_dims]
        )
        if self.in_range == "image":
            output = self.out_arr.zarr_array("r+")
            output.attrs[RANGE_ATTRIBUTE] = [
                list(r) for r in self._whole_input_ranges()
            ]

    def _whole_input_ranges(self) -> list[IntensityRange]:
        array = self.grid_array
        spatial_axes = tuple(range(array.channel_dims, len(array.shape)))
        lows, highs = dask.compute(
            array.data.min(axis=spatial_axes), array.data.max(axis=spatial_axes)
        )
        return list(
            zip(
                np.ravel(lows).astype(float).tolist(),
                np.ravel(highs).astype(float).tolist(),
                strict=True,
            )
        )

    def channel_ranges(self) -> list[IntensityRange]:
        """The intensity range of each channel, ``in_range`` resolved."""
        if self.in_range == "image":
            output = self.out_arr.zarr_array("r")
            stored: Any = output.attrs[RANGE_ATTRIBUTE]
            return [(float(low), float(high)) for low, high in stored]
        if isinstance(self.in_range, str):
            name = self.in_range
            if name == "dtype":
                name = self.grid_array.dtype.name
            return [TYPE_RANGES[name]] * self.num_channels
        if isinstance(self.in_range, tuple):
            return [self.in_range] * self.num_channels
        return list(self.in_range)

    @contextmanager
    def process_block_func(self) -> Iterator:
        source = self.in_arr.array("r")
        mask = self.mask_arr.array("r") if self.mask_arr is not None else None
        output = self.out_arr.array("r+")
        ranges, kernel, clip_limit = self.channel_ranges(), self.kernel, self.clip_limit
        voxel_size = source.voxel_size

        def process_block(block) -> None:
            write_roi = block.write_roi.intersect(output.roi)
            if write_roi.empty:
                return
            read_roi = exact_read_roi(write_roi, source.roi, kernel, voxel_size)
            data = source.to_ndarray(read_roi)
            channels = data.reshape(-1, *data.shape[source.channel_dims :])
            keep = None if mask is None else _mask_in(mask, read_roi)
            equalized = np.stack(
                [
                    equalize_grey_levels(
                        _masked(to_grey_levels(channel, *bounds), keep),
                        kernel,
                        clip_limit,
                    )
                    for channel, bounds in zip(channels, ranges, strict=True)
                ]
            ).reshape(data.shape)
            result = Array(equalized, read_roi.offset, voxel_size)
            output[write_roi] = grey_levels_to_uint8(result[write_roi])

        yield process_block


def exact_read_roi(
    write_roi: Roi, volume_roi: Roi, kernel: Coordinate, voxel_size: Coordinate
) -> Roi:
    """The region to equalize so that the result in ``write_roi`` equals that
    of equalizing all of ``volume_roi``; ROIs in world units, ``kernel`` in
    voxels."""
    starts, stops = exact_read_region(
        write_roi.begin / voxel_size,
        write_roi.end / voxel_size,
        kernel,
        volume_roi.begin / voxel_size,
        volume_roi.end / voxel_size,
    )
    begin, end = Coordinate(starts), Coordinate(stops)
    return Roi(begin * voxel_size, (end - begin) * voxel_size)


def _mask_in(mask: Array, roi: Roi) -> np.ndarray:
    """Where ``mask`` is non-zero in ``roi`` (spatial axes only)."""
    values = mask.to_ndarray(roi, fill_value=0)
    return values.reshape(values.shape[mask.channel_dims :]) > 0


def _masked(levels: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    return levels if keep is None else np.where(keep, levels, 0).astype(levels.dtype)
