"""A volara plugin with one task, `Smooth`: gaussian smoothing of an
intensity volume, block by block."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
from funlib.geometry import Coordinate
from funlib.persistence import Array
from scipy.ndimage import gaussian_filter

from volara.blockwise import GridTask
from volara.datasets import Dataset, Raw, read_region, write_region

TRUNCATE = 4.0
"""The gaussian is cut off this many sigmas from its centre."""


class Smooth(GridTask):
    """Smooth ``in_data`` with a gaussian of ``sigma`` voxels, into
    ``out_data`` (float32)."""

    task_type: Literal["smooth"] = "smooth"
    in_data: Raw
    """The intensities to smooth, one channel."""
    out_data: Raw
    """Where the smoothed intensities go: float32, on the grid of
    ``in_data``."""
    sigma: tuple[float, float, float]
    """Standard deviation of the gaussian, in voxels, one value per spatial
    axis (z, y, x)."""
    fit: Literal["shrink"] = "shrink"
    read_write_conflict: Literal[False] = False

    @property
    def task_name(self) -> str:
        # names the log directory and the block tracking: one per output
        return f"{self.out_data.name}-{self.task_type}"

    @property
    def grid_dataset(self) -> Dataset:
        return self.in_data

    @property
    def output_datasets(self) -> list[Dataset]:
        return [self.out_data]

    @property
    def context_voxels(self) -> Coordinate:
        # the gaussian's reach: with it, the blocks join without seams
        return Coordinate(math.ceil(TRUNCATE * s) for s in self.sigma)

    def init(self) -> None:
        self.prepare_output(self.out_data, np.float32)

    @contextmanager
    def process_block_func(self) -> Iterator:
        # runs once per worker: open the arrays, then process blocks
        source = self.in_data.array("r")
        target = self.out_data.array("r+")
        sigma = self.sigma

        def process_block(block) -> None:
            # at the faces of the volume, read what there is ("nearest"
            # repeats the last voxel, as for the whole volume at once)
            read_roi = block.read_roi.intersect(source.roi)
            values = read_region(source, read_roi).astype(np.float32)
            smooth = Array(
                gaussian_filter(values, sigma, mode="nearest", truncate=TRUNCATE),
                read_roi.offset,
                source.voxel_size,
            )
            write_region(target, block.write_roi, smooth[block.write_roi])

        yield process_block
