"""Argmax: the most probable class per voxel."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
from funlib.persistence import Array
from pydantic import field_validator

from ..datasets import Dataset, Labels, Raw
from ..kernels.classes import argmax_classes
from .grid import GridTask


class Argmax(GridTask):
    """Write, per voxel, the index of the channel with the highest value."""

    task_type: Literal["argmax"] = "argmax"
    probs_data: Raw
    """Class probabilities (or scores), channels first: ``(classes, z, y, x)``."""
    sem_data: Labels
    """The output class labels, on the grid of ``probs_data``."""
    combine_classes: list[list[int]] | None = None
    """Groups of input channels summed into one class before the argmax:
    output class ``i`` is the sum of the channels in ``combine_classes[i]``.
    ``None`` uses every channel as its own class."""
    fit: Literal["shrink"] = "shrink"
    read_write_conflict: Literal[False] = False

    @field_validator("combine_classes")
    @classmethod
    def _groups_not_empty(cls, groups):
        if groups is not None:
            if len(groups) == 0 or any(len(group) == 0 for group in groups):
                raise ValueError(
                    "combine_classes: every group needs at least one channel"
                )
        return groups

    @property
    def task_name(self) -> str:
        return f"{self.sem_data.name}-{self.task_type}"

    @property
    def grid_dataset(self) -> Dataset:
        return self.probs_data

    @property
    def output_datasets(self) -> list[Dataset]:
        return [self.sem_data]

    @property
    def num_classes(self) -> int:
        if self.combine_classes is not None:
            return len(self.combine_classes)
        return int(self.grid_array.shape[0])

    @property
    def out_dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.num_classes <= 256 else np.uint32)

    def check_config(self) -> None:
        super().check_config()
        array = self.grid_array
        if array.channel_dims != 1:
            raise ValueError(
                f"Argmax.probs_data: {self.probs_data.store!s} needs exactly one "
                f"channel axis (classes first), got shape {array.shape}"
            )
        num_channels = int(array.shape[0])
        for group in self.combine_classes or []:
            bad = [c for c in group if not 0 <= c < num_channels]
            if bad:
                raise ValueError(
                    f"Argmax.combine_classes: channels {bad} do not exist; "
                    f"{self.probs_data.store!s} has {num_channels} channels"
                )

    def init(self) -> None:
        self.init_out_array()

    def init_out_array(self) -> None:
        """Prepare the output array (volara 1.0.5's name; `init` does it
        before a run)."""
        self.prepare_output(self.sem_data, self.out_dtype)

    @contextmanager
    def process_block_func(self) -> Iterator:
        probabilities = self.probs_data.array("r")
        semantic = self.sem_data.array("r+")

        def process_block(block) -> None:
            self.argmax_block(block, probabilities, semantic)

        yield process_block

    def argmax_block(self, block, probabilities: Array, semantic: Array) -> None:
        """Write the classes of one block: read ``block.write_roi`` of
        ``probabilities`` (``probs_data``, opened), take the argmax over the
        (combined) classes and write it to ``semantic`` (``sem_data``,
        opened for writing) in its dtype."""
        scores = probabilities.to_ndarray(block.write_roi)
        classes = argmax_classes(scores, self.combine_classes)
        semantic[block.write_roi] = classes.astype(semantic.dtype)
