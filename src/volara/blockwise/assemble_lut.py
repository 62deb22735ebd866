"""AssembleLUT: the look-up table of a level, from the pieces its blocks
wrote, optionally composed with the tables of the levels below."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np

from ..lut import LUT, LUTS
from .graph_level import LevelTask, OneBlockTask, describe, piece_table

logger = logging.getLogger(__name__)


class AssembleLUT(OneBlockTask, LevelTask):
    """Gather the pieces of `lut` that the blocks of a level wrote (one per
    block of `block_size` tiling `roi`) into the table itself, in one block
    that runs when all pieces are written. With `composed`, also write the
    table from the first level's fragments to this level's segments: the
    tables of `below` followed by `lut` (`LUTS.load_iterated`)."""

    task_type: Literal["assemble-lut"] = "assemble-lut"
    below: list[LUT] = []
    """The tables of the levels below, finest first (empty for the first
    level)."""
    composed: LUT | None = None
    """Where to save the table from the finest fragments to this level's
    segments; ``None``: only `lut` is saved."""
    fit: Literal["shrink"] = "shrink"
    read_write_conflict: Literal[False] = False

    @property
    def task_name(self) -> str:
        return f"{self.lut.name}-{self.task_type}"

    @property
    def output_paths(self) -> list:
        outputs = [self.lut.location]
        return outputs if self.composed is None else [*outputs, self.composed.location]

    def check_config(self) -> None:
        if self.composed is not None and self.composed.location in {
            lut.location for lut in [self.lut, *self.below]
        }:
            raise ValueError(
                "AssembleLUT.composed is one of the tables it is composed of: give "
                "it a path of its own"
            )

    def drop_artifacts(self) -> None:
        self.lut.drop()
        if self.composed is not None:
            self.composed.drop()

    @contextmanager
    def process_block_func(self) -> Iterator:
        def process_block(block) -> None:
            self.assemble()

        yield process_block

    def assemble(self) -> np.ndarray:
        """Save and return the level's table (and the composed one)."""
        pieces = [piece_table(self.lut, index) for index in self.grid_indices()]
        table = (
            np.concatenate(pieces, axis=1) if pieces else np.zeros((2, 0), np.uint64)
        )
        # by fragment id, as GraphMWS saves it: the table does not depend on
        # the block layout
        table = table[:, np.argsort(table[0], kind="stable")]
        self.lut.save(table)
        logger.info("saved %s: %s", self.lut.uri, describe(table))
        if self.composed is not None:
            composed = LUTS([*self.below, self.lut]).load_iterated()
            self.composed.save(composed)
            logger.info("saved %s: %s", self.composed.uri, describe(composed))
        return table
