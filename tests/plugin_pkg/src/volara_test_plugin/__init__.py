"""A volara task plugin, installed by the test environment: volara must find
`Invert` through the ``volara.blockwise_tasks`` entry points alone."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from volara.blockwise import GridTask, Predict
from volara.datasets import Dataset, Labels, Raw


class Invert(GridTask):
    """Write ``maximum - value`` for every voxel of ``in_data``."""

    task_type: Literal["test-invert"] = "test-invert"
    in_data: Raw
    """The intensities to invert."""
    out_data: Labels
    """The inverted intensities, same dtype as ``in_data``."""
    maximum: float = 255
    """The value that 0 becomes."""
    fit: Literal["shrink"] = "shrink"
    read_write_conflict: Literal[False] = False

    @property
    def task_name(self) -> str:
        return f"{self.out_data.name}-{self.task_type}"

    @property
    def grid_dataset(self) -> Dataset:
        return self.in_data

    @property
    def output_datasets(self) -> list[Dataset]:
        return [self.out_data]

    def init(self) -> None:
        self.prepare_output(self.out_data, self.grid_array.dtype)

    @contextmanager
    def process_block_func(self) -> Iterator:
        source = self.in_data.array("r")
        target = self.out_data.array("r+")
        maximum = self.maximum

        def process_block(block) -> None:
            values = source.to_ndarray(block.write_roi)
            target[block.write_roi] = (maximum - values).astype(target.dtype)

        yield process_block


class PluginPredict(Predict):
    """Stands in for volara-torch's ``Predict``: a plugin task registered as
    ``predict``, the name of a built-in task. It stores every output
    inverted (``255 - value``), so a test can tell which task ran."""

    def stored_values(self, output):
        return 255 - super().stored_values(output)
