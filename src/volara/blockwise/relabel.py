"""Relabel: fragments to segments through a look-up table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
from funlib.persistence import Array

from ..datasets import Dataset, Labels, read_region, write_region
from ..kernels.relabel import relabel, sorted_mapping
from ..lut import LUT
from .grid import GridTask


class Relabel(GridTask):
    """Write ``lut[fragment]`` for every voxel of ``frags_data``.

    Fragment ids missing from the table keep their id; 0 stays background
    unless the table maps it.
    """

    task_type: Literal["relabel"] = "relabel"
    frags_data: Labels
    """The fragments to relabel."""
    seg_data: Labels
    """The output segmentation, uint64, on the grid of ``frags_data``."""
    lut: LUT
    """The look-up table from fragment ids to segment ids (e.g. written by
    `GraphMWS`)."""
    fit: Literal["shrink"] = "shrink"
    read_write_conflict: Literal[False] = False
    _out_array_dtype: np.dtype = np.dtype(np.uint64)

    @property
    def task_name(self) -> str:
        return f"{self.seg_data.name}-{self.task_type}"

    @property
    def grid_dataset(self) -> Dataset:
        return self.frags_data

    @property
    def output_datasets(self) -> list[Dataset]:
        return [self.seg_data]

    def check_config(self) -> None:
        super().check_config()
        if not self.produced_upstream(self.lut.location):
            self.lut.check_readable()

    def init(self) -> None:
        self.init_out_array()

    def init_out_array(self) -> None:
        """Prepare the output array (volara 1.0.5's name; `init` does it
        before a run)."""
        self.prepare_output(self.seg_data, np.uint64)

    @contextmanager
    def process_block_func(self) -> Iterator:
        fragments = self.frags_data.array("r")
        segments = self.seg_data.array("r+")
        lut = self.lut
        mapping: list[tuple[np.ndarray, np.ndarray]] = []

        def process_block(block) -> None:
            # Loaded on the first block, not at setup: in a pipeline the
            # worker may start before the task writing the table has finished.
            if not mapping:
                table = lut.load()
                if table is None:
                    raise FileNotFoundError(f"LUT.path: no look-up table at {lut.uri}")
                mapping.append(sorted_mapping(table[0], table[1]))
            self.map_block(block, fragments, segments, *mapping[0])

        yield process_block

    def map_block(
        self,
        block,
        frags: Array,
        segs: Array,
        src_sorted: np.ndarray,
        dst_sorted: np.ndarray,
    ) -> None:
        """Relabel one block: read ``block.write_roi`` of ``frags``
        (``frags_data``, opened), map each id found in ``src_sorted`` to its
        ``dst_sorted`` entry (the table sorted by source id, e.g. by
        `volara.segment_utils.prepare_mapping`), keep the others, and write
        the result to ``segs`` (``seg_data``, opened for writing)."""
        labels = read_region(frags, block.write_roi)
        write_region(segs, block.write_roi, relabel(labels, src_sorted, dst_sorted))
