"""Look-up tables from fragment ids to segment ids, stored as ``.npz``.

A LUT file holds ``fragment_segment_lut``, a ``(2, n)`` uint64 array whose
first row are fragment ids and second row the segment each belongs to.

A table lives in a local file or, as in volara 1.0.5, at an ``s3://`` uri
(any fsspec url works the same way, e.g. ``memory://``); remote tables are
read and written through fsspec (``s3fs`` for S3), imported only when used.
"""

from __future__ import annotations

import io
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pydantic import field_validator

from . import stores
from .kernels.relabel import map_values, sorted_mapping
from .segment_utils import replace_values as replace_values  # volara 1.0.5 import
from .utils import StrictBaseModel

LUT_KEY = "fragment_segment_lut"


class LUT(StrictBaseModel):
    """A look-up table file mapping fragment ids to segment ids."""

    path: Path | str
    """Where the table is stored: a local path or an ``s3://`` uri (e.g.
    ``s3://bucket/data.zarr/lut.npz``). ``.npz`` is appended when missing."""
    s3_kwargs: dict[str, Any] | None = None
    """Options for the S3 filesystem (``s3fs.S3FileSystem(**s3_kwargs)``),
    e.g. ``key``, ``secret`` and an ``endpoint_url`` for S3-compatible
    stores (as for datasets, see `volara.stores`); ``None``: credentials and
    endpoint from the environment. Only used for remote paths."""

    @field_validator("path", mode="wrap")
    @classmethod
    def _path_as_path(cls, path: Any, handler: Any) -> Path | str:
        # JSON cannot tell a str from a Path: one type keeps configs equal
        # after a round trip through a file. A url stays a string (a Path
        # would fold its "//").
        return stores.validate_location(path, handler, "path")

    @property
    def is_s3(self) -> bool:
        """Whether the table lives behind a url (``s3://...``) rather than in
        a local file."""
        return isinstance(self.path, str)

    @property
    def uri(self) -> str:
        """Where the table is, as a string: the url of a remote table (with
        ``.npz``), the local file's path otherwise."""
        if isinstance(self.path, str):
            return self.path if self.path.endswith(".npz") else f"{self.path}.npz"
        return str(self.file)

    @property
    def file(self) -> Path:
        """The local ``.npz`` file of this table (`uri` for remote ones)."""
        if isinstance(self.path, str):
            raise ValueError(
                f"LUT.path: {self.path} is a url and has no local file; use `uri`"
            )
        path = self.path
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @property
    def location(self) -> Path | str:
        """The table's place, to compare with other tasks' outputs: the local
        file, or the url."""
        return self.uri if self.is_s3 else self.file

    @property
    def name(self) -> str:
        return PurePosixPath(self.uri).stem

    def check_reachable(self, what: str = "LUT.path") -> None:
        """For a url: raise a clear error, naming ``what``, if volara cannot
        use its protocol, or its server does not answer, refuses the
        credentials or has no such bucket. Does nothing for a local file."""
        if self.is_s3:
            stores.check_reachable(self.uri, self.s3_kwargs, what)

    def _filesystem(self):
        self.check_reachable()
        return stores.filesystem(self.uri, self.s3_kwargs, "LUT.path")

    def exists(self) -> bool:
        if self.is_s3:
            return bool(self._filesystem().exists(self.uri))
        return self.file.exists()

    def drop(self) -> None:
        """Delete the table, if there is one."""
        if self.is_s3:
            filesystem = self._filesystem()
            if filesystem.exists(self.uri):
                filesystem.rm(self.uri)
            filesystem.invalidate_cache(self.uri)
        elif self.file.exists():
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
        if self.is_s3:
            # written whole in one put: readers see the old or the new table
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
            self._put(buffer.getvalue())
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.file.with_name(self.file.name + ".partial.npz")
        np.savez_compressed(partial, **arrays)  # type: ignore[arg-type]
        partial.replace(self.file)

    def _put(self, content: bytes) -> None:
        filesystem = self._filesystem()
        try:
            filesystem.pipe_file(self.uri, content)
        except (NotImplementedError, OSError) as e:
            # e.g. http:// is read-only; a missing bucket or no write right
            raise OSError(
                f"LUT.path: cannot write the look-up table to {self.uri} "
                f"({type(e).__name__}: {e}). Give a writable location: a local "
                "path or an s3:// url in an existing bucket."
            ) from e
        filesystem.invalidate_cache(self.uri)

    def load(self) -> np.ndarray | None:
        """The ``(2, n)`` table, or ``None`` if there is none at `path`."""
        if self.is_s3:
            filesystem = self._filesystem()
            if not filesystem.exists(self.uri):
                return None
            source: Any = io.BytesIO(filesystem.cat_file(self.uri))
        elif not self.file.exists():
            return None
        else:
            source = self.file
        try:
            with np.load(source, allow_pickle=False) as data:
                lut = data[LUT_KEY]
        except (zipfile.BadZipFile, ValueError, OSError, KeyError, EOFError) as e:
            raise ValueError(
                f"LUT.path: {self.uri} is not a readable look-up table (an .npz "
                f"with a (2, n) '{LUT_KEY}' array): {e}. Rerun the task that "
                "writes it (e.g. GraphMWS) after deleting the file."
            ) from e
        if lut.ndim != 2 or lut.shape[0] != 2:
            raise ValueError(
                f"LUT.path: {self.uri} holds an array of shape {lut.shape}; a "
                "look-up table has shape (2, n)"
            )
        return lut

    def check_readable(self) -> None:
        """Raise a clear error if the table is missing or unreadable."""
        if self.load() is None:
            raise FileNotFoundError(
                f"LUT.path: no look-up table at {self.uri}. Run the task that "
                "writes it (e.g. GraphMWS) first, or fix the path."
            )

    def __add__(self, other: LUT | LUTS) -> LUTS:
        return LUTS(luts=[self]) + other

    # -------------------------------------------- tables written block by block

    def level(self, level: int) -> LUT:
        """The table of one level of a hierarchical agglomeration written
        into this one: beside it, named ``<name>_level<level>``."""
        return self._at(f"{self.uri.removesuffix('.npz')}_level{level}.npz")

    @property
    def pieces_uri(self) -> str:
        """The folder (or url prefix) holding the pieces of this table that
        blockwise tasks write, one per block: beside the table, named after
        it with ``.blocks``."""
        return f"{self.uri.removesuffix('.npz')}.blocks"

    def piece(self, block_index: Sequence[int]) -> LUT:
        """The piece of this table written by the block at ``block_index``
        (its position in the block grid, one integer per axis)."""
        name = "_".join(str(int(i)) for i in block_index)
        return self._at(f"{self.pieces_uri}/{name}.npz")

    def _at(self, uri: str) -> LUT:
        """A table at ``uri``, on the same store as this one."""
        return LUT(path=uri if self.is_s3 else Path(uri), s3_kwargs=self.s3_kwargs)

    def drop_pieces(self) -> None:
        """Delete every piece of this table."""
        if self.is_s3:
            filesystem = self._filesystem()
            if filesystem.exists(self.pieces_uri):
                filesystem.rm(self.pieces_uri, recursive=True)
            filesystem.invalidate_cache(self.pieces_uri)
        else:
            shutil.rmtree(self.pieces_uri, ignore_errors=True)


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
