"""Look-up tables from fragment ids to segment ids, stored as ``.npz``.

A LUT file holds ``fragment_segment_lut``, a ``(2, n)`` uint64 array whose
first row are fragment ids and second row the segment each belongs to.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import field_validator

from .kernels.relabel import map_values, sorted_mapping
from .utils import StrictBaseModel

LUT_KEY = "fragment_segment_lut"


class LUT(StrictBaseModel):
    """A look-up table file mapping fragment ids to segment ids."""

    path: Path | str
    """Where the table is stored. ``.npz`` is appended when missing."""

    @field_validator("path")
    @classmethod
    def _path_as_path(cls, path: Path | str) -> Path:
        # JSON cannot tell a str from a Path: one type keeps configs equal
        # after a round trip through a file.
        return Path(path)

    @property
    def file(self) -> Path:
        """The ``.npz`` file of this table."""
        path = Path(self.path)
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @property
    def name(self) -> str:
        return self.file.stem

    def exists(self) -> bool:
        return self.file.exists()

    def drop(self) -> None:
        """Delete the file, if there is one."""
        if self.file.exists():
            self.file.unlink()

    def save(self, lut: np.ndarray, edges: np.ndarray | None = None) -> None:
        """Write ``lut`` (shape ``(2, n)``: fragment ids, segment ids) and
        optionally the merge ``edges`` that produced it. The file is replaced
        atomically, so a reader never sees half a table."""
        lut = np.asarray(lut)
        if lut.ndim != 2 or lut.shape[0] != 2:
            raise ValueError(
                f"a LUT has shape (2, n) (fragment ids, segment ids), got {lut.shape}"
            )
        arrays = {LUT_KEY: lut.astype(np.uint64)}
        if edges is not None:
            arrays["edges"] = np.asarray(edges)
        self.file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.file.with_name(self.file.name + ".partial.npz")
        np.savez_compressed(partial, **arrays)  # type: ignore[arg-type]
        partial.replace(self.file)

    def load(self) -> np.ndarray | None:
        """The ``(2, n)`` table, or ``None`` if the file does not exist."""
        if not self.file.exists():
            return None
        try:
            with np.load(self.file, allow_pickle=False) as data:
                lut = data[LUT_KEY]
        except (zipfile.BadZipFile, ValueError, OSError, KeyError, EOFError) as e:
            raise ValueError(
                f"LUT.path: {self.file} is not a readable look-up table (an .npz "
                f"with a (2, n) '{LUT_KEY}' array): {e}. Rerun the task that "
                "writes it (e.g. GraphMWS) after deleting the file."
            ) from e
        if lut.ndim != 2 or lut.shape[0] != 2:
            raise ValueError(
                f"LUT.path: {self.file} holds an array of shape {lut.shape}; a "
                "look-up table has shape (2, n)"
            )
        return lut

    def check_readable(self) -> None:
        """Raise a clear error if the table is missing or unreadable."""
        if self.load() is None:
            raise FileNotFoundError(
                f"LUT.path: no look-up table at {self.file}. Run the task that "
                "writes it (e.g. GraphMWS) first, or fix the path."
            )

    def __add__(self, other: LUT | LUTS) -> LUTS:
        return LUTS(luts=[self]) + other


class LUTS:
    """Several LUTs used together.

    `load` joins tables over disjoint fragments (``{1: 5} + {2: 6}``);
    `load_iterated` chains them, each table relabelling the output of the
    previous one (``{1: 5} then {5: 9}`` gives ``{1: 9}``).
    """

    def __init__(self, luts: LUT | Sequence[LUT]):
        self.luts: list[LUT] = [luts] if isinstance(luts, LUT) else list(luts)

    def __add__(self, other: LUT | LUTS) -> LUTS:
        if isinstance(other, LUT):
            return LUTS(self.luts + [other])
        if isinstance(other, LUTS):
            return LUTS(self.luts + other.luts)
        return NotImplemented

    def load(self) -> np.ndarray:
        tables = [
            table for table in (lut.load() for lut in self.luts) if table is not None
        ]
        if not tables:
            return np.zeros((2, 0), dtype=np.uint64)
        return np.concatenate(tables, axis=1)

    def load_iterated(self) -> np.ndarray:
        tables = [
            table for table in (lut.load() for lut in self.luts) if table is not None
        ]
        if not tables:
            return np.zeros((2, 0), dtype=np.uint64)
        result = tables[0].astype(np.uint64)
        for table in tables[1:]:
            src, dst = sorted_mapping(table[0], table[1])
            result = np.stack([result[0], map_values(result[1], src, dst)])
        return result
