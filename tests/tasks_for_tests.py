"""Small custom tasks used by the tests.

They live in a module of their own (not a test module) so daisy's worker
processes can import them by name, exactly as they would import a plugin.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, Literal

import networkx as nx
import numpy as np
from funlib.geometry import Coordinate, Roi

from volara.blockwise import BlockwiseTask, GridTask
from volara.datasets import Dataset, Labels
from volara.dbs import AnyDB
from volara.lut import LUT
from volara.utils import PydanticCoordinate


class SlowCopy(GridTask):
    """Write ``2 * value + 1``, sleeping ``delay`` seconds per block first:
    slow enough to be interrupted in the middle of a run."""

    task_type: Literal["test-slow-copy"] = "test-slow-copy"
    in_data: Labels
    out_data: Labels
    delay: float = 0.0
    # the base class's own `fit` validation is what the tests exercise
    fit: str = "shrink"
    read_write_conflict: bool = False

    @property
    def task_name(self) -> str:
        return f"{self.out_data.name}-slow-copy"

    @property
    def grid_dataset(self) -> Dataset:
        return self.in_data

    @property
    def output_datasets(self) -> list[Dataset]:
        return [self.out_data]

    def init(self) -> None:
        self.prepare_output(self.out_data, np.uint64)

    @contextmanager
    def process_block_func(self) -> Iterator:
        source = self.in_data.array("r")
        target = self.out_data.array("r+")
        delay = self.delay

        def process_block(block) -> None:
            time.sleep(delay)
            values = source.to_ndarray(block.write_roi).astype(np.uint64)
            target[block.write_roi] = values * np.uint64(2) + np.uint64(1)

        yield process_block


class AddArrays(GridTask):
    """Write ``a + b``; both inputs must share one voxel grid."""

    task_type: Literal["test-add"] = "test-add"
    a: Labels
    b: Labels
    out: Labels
    fit: Literal["shrink"] = "shrink"
    read_write_conflict: Literal[False] = False

    @property
    def task_name(self) -> str:
        return f"{self.out.name}-add"

    @property
    def grid_dataset(self) -> Dataset:
        return self.a

    @property
    def output_datasets(self) -> list[Dataset]:
        return [self.out]

    def check_config(self) -> None:
        super().check_config()
        self.check_same_grid("b", self.b)

    def init(self) -> None:
        self.prepare_output(self.out, np.uint16)

    @contextmanager
    def process_block_func(self) -> Iterator:
        a, b, out = self.a.array("r"), self.b.array("r"), self.out.array("r+")

        def process_block(block) -> None:
            total = a.to_ndarray(block.write_roi).astype(np.uint16)
            total += b.to_ndarray(block.write_roi).astype(np.uint16)
            out[block.write_roi] = total

        yield process_block


class WorldBlocks(BlockwiseTask):
    """Copy ``in_data`` with blocks given in world units (as a task that is
    not a `GridTask` would)."""

    task_type: Literal["test-world-blocks"] = "test-world-blocks"
    in_data: Labels
    out_data: Labels
    block_size_world: PydanticCoordinate
    fit: Literal["shrink"] = "shrink"
    read_write_conflict: Literal[False] = False

    @property
    def task_name(self) -> str:
        return f"{self.out_data.name}-world-blocks"

    @property
    def voxel_size(self) -> Coordinate:
        return self.in_data.array("r").voxel_size

    @property
    def write_roi(self) -> Roi:
        return self.in_data.array("r").roi

    @property
    def write_size(self) -> Coordinate:
        return self.block_size_world

    @property
    def context_size(self) -> Coordinate:
        return Coordinate((0,) * self.block_size_world.dims)

    @property
    def output_datasets(self) -> list[Dataset]:
        return [self.out_data]

    def init(self) -> None:
        source = self.in_data.array("r")
        self.out_data.prepare(
            shape=source.shape,
            chunk_shape=source.shape,
            offset=source.offset,
            voxel_size=source.voxel_size,
            units=None,
            axis_names=None,
            types=None,
            dtype=source.dtype,
        )

    @contextmanager
    def process_block_func(self) -> Iterator:
        source, target = self.in_data.array("r"), self.out_data.array("r+")

        def process_block(block) -> None:
            target[block.write_roi] = source.to_ndarray(block.write_roi)

        yield process_block


class WriteNodes(GridTask):
    """Write one graph node per block: id ``1 + block index`` (C order),
    position the block's center (world units), size its nonzero voxels."""

    task_type: Literal["test-write-nodes"] = "test-write-nodes"
    labels: Labels
    db: AnyDB
    fit: Literal["shrink"] = "shrink"
    read_write_conflict: Literal[False] = False

    @property
    def task_name(self) -> str:
        return f"{self.db.id}-write-nodes"

    @property
    def grid_dataset(self) -> Dataset:
        return self.labels

    def init(self) -> None:
        self.db.init()

    def drop_artifacts(self) -> None:
        self.db.drop()

    @contextmanager
    def process_block_func(self) -> Iterator:
        labels = self.labels.array("r")
        graph_db = self.db.open("r+")
        write_roi, write_size = self.write_roi, self.write_size
        grid_shape = -(-write_roi.shape // write_size)

        def process_block(block) -> None:
            index = (block.write_roi.offset - write_roi.offset) / write_size
            node_id = 1 + int(np.ravel_multi_index(tuple(index), tuple(grid_shape)))
            graph = nx.Graph()
            graph.add_node(
                node_id,
                position=tuple(float(c) for c in block.write_roi.center),
                size=int(np.count_nonzero(labels.to_ndarray(block.write_roi))),
                filtered=False,
            )
            graph_db.write_graph(graph, block.write_roi)

        yield process_block


class WriteLUT(BlockwiseTask):
    """Save ``table`` as a look-up table in one block covering ``roi`` (as
    a global agglomeration task would: downstream blocks wait for the
    upstream blocks under them, so the one block must cover them all)."""

    task_type: Literal["test-write-lut"] = "test-write-lut"
    lut: LUT
    table: list[list[int]]
    fit: Literal["shrink"] = "shrink"
    read_write_conflict: Literal[False] = False

    @property
    def task_name(self) -> str:
        return f"{self.lut.name}-write-lut"

    @property
    def write_roi(self) -> Roi:
        if self.roi is None:
            raise ValueError("WriteLUT.roi: give the region the table is for")
        return self.roi

    @property
    def write_size(self) -> Coordinate:
        return self.write_roi.shape

    @property
    def context_size(self) -> Coordinate:
        return Coordinate((0,) * self.write_roi.dims)

    @property
    def output_paths(self) -> list[Path]:
        return [self.lut.file]

    def drop_artifacts(self) -> None:
        self.lut.drop()

    @contextmanager
    def process_block_func(self) -> Iterator:
        lut, table = self.lut, np.array(self.table)

        def process_block(block) -> None:
            lut.save(table)

        yield process_block


class RecordingCopy(SlowCopy):
    """`SlowCopy` that records, per block, which process ran it (its id, its
    parent's id and command line) and one draw of numpy's global random
    generator, as ``<record_dir>/<block id>.json``. With ``pause_file``, the
    first block writes its process id there and sleeps until killed."""

    task_type: Literal["test-recording-copy"] = "test-recording-copy"
    record_dir: Path
    pause_file: Path | None = None

    @contextmanager
    def process_block_func(self) -> Iterator:
        record_dir, pause_file = self.record_dir, self.pause_file
        with super().process_block_func() as copy_block:

            def process_block(block) -> None:
                _pause_first_block(pause_file)
                copy_block(block)
                _record_process(record_dir / f"{block.block_id[1]}.json")

            yield process_block


class PreloadingRecordingCopy(RecordingCopy):
    """`RecordingCopy` whose workers ask the prefork host to call
    `note_preloaded` before it forks them."""

    task_type: Literal["test-preloading-recording-copy"] = (
        "test-preloading-recording-copy"
    )
    worker_imports: ClassVar[tuple[str, ...]] = ("tasks_for_tests:note_preloaded",)


PRELOADED_IN: int | None = None
"""The process that called `note_preloaded` (recorded with every block)."""


def note_preloaded() -> None:
    global PRELOADED_IN
    PRELOADED_IN = os.getpid()


def _pause_first_block(pause_file: Path | None) -> None:
    if pause_file is None:
        return
    try:
        with open(pause_file, "x") as file:
            file.write(str(os.getpid()))
    except FileExistsError:
        return
    time.sleep(120)


def _record_process(path: Path) -> None:
    parent = os.getppid()
    parent_command = Path(f"/proc/{parent}/cmdline").read_text().replace("\0", " ")
    record = {
        "pid": os.getpid(),
        "ppid": parent,
        "parent_command": parent_command,
        "random": float(np.random.random()),
        "preloaded_in": PRELOADED_IN,
    }
    path.write_text(json.dumps(record))
