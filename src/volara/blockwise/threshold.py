"""Threshold: a binary mask of where intensities exceed a value."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np

from ..datasets import Dataset, Labels, Raw, read_region, write_region
from .grid import GridTask


class Threshold(GridTask):
    """Write ``in_data > threshold`` as a uint8 mask (1 above, 0 elsewhere)."""

    task_type: Literal["threshold"] = "threshold"
    in_data: Raw
    """The intensities to threshold (one channel, or select one with
    ``Raw.channels``)."""
    mask: Labels
    """The output mask, uint8, on the grid of ``in_data``."""
    threshold: float
    """Voxels with a value strictly greater than this become 1."""
    fit: Literal["shrink"] = "shrink"
    read_write_conflict: Literal[False] = False

    @property
    def task_name(self) -> str:
        return f"{self.mask.name}-{self.task_type}"

    @property
    def grid_dataset(self) -> Dataset:
        return self.in_data

    @property
    def output_datasets(self) -> list[Dataset]:
        return [self.mask]

    def check_config(self) -> None:
        super().check_config()
        array = self.grid_array
        # one selected channel (Raw.channels=[c]) leaves an axis of size 1
        single_channel = array.channel_dims == 1 and array.shape[0] == 1
        if array.channel_dims > 0 and not single_channel:
            raise ValueError(
                f"Threshold.in_data: {self.in_data.store!s} has channel axes "
                f"(shape {array.shape}); select one channel with Raw.channels"
            )

    def init(self) -> None:
        self.init_out_array()

    def init_out_array(self) -> None:
        """Prepare the output array (volara 1.0.5's name; `init` does it
        before a run)."""
        self.prepare_output(self.mask, np.uint8)

    @contextmanager
    def process_block_func(self) -> Iterator:
        intensities = self.in_data.array("r")
        mask = self.mask.array("r+")
        threshold = self.threshold

        def process_block(block) -> None:
            values = read_region(intensities, block.write_roi)
            if values.ndim > block.write_roi.dims:
                values = values[0]
            write_region(mask, block.write_roi, (values > threshold).astype(np.uint8))

        yield process_block
