"""A task whose blocks do nothing: what scheduling alone costs.

In a module of its own so that daisy's worker processes import it by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from funlib.geometry import Coordinate, Roi

from volara.blockwise import BlockwiseTask


class NoOp(BlockwiseTask):
    """``num_blocks`` blocks of one voxel in a row, each doing nothing."""

    task_type: str = "benchmark-noop"
    num_blocks: int
    name: str = "noop"
    fit: str = "valid"
    read_write_conflict: bool = False

    @property
    def task_name(self) -> str:
        return f"{self.name}-{self.num_blocks}"

    @property
    def write_roi(self) -> Roi:
        return Roi((0, 0, 0), (1, 1, self.num_blocks))

    @property
    def write_size(self) -> Coordinate:
        return Coordinate(1, 1, 1)

    @property
    def context_size(self) -> Coordinate:
        return Coordinate(0, 0, 0)

    @contextmanager
    def process_block_func(self) -> Iterator:
        def process_block(block) -> None:
            pass

        yield process_block
