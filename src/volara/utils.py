"""Geometry types for pydantic models and the strict base model of every config.

`PydanticCoordinate` and `PydanticRoi` let a field hold a real
`funlib.geometry.Coordinate` / `Roi` while accepting plain lists from JSON and
YAML, and writing plain lists back. A `Roi` is written as
``[[offset...], [shape...]]`` in world units.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from funlib.geometry import Coordinate, Roi
from pydantic import BaseModel, ConfigDict
from pydantic_core import core_schema

OpenMode = Literal["r", "r+", "a", "w", "w-"]


def _to_coordinate(value: Any) -> Coordinate:
    if isinstance(value, Coordinate):
        return value
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"expected a list of integers like [1, 2, 3], got {value!r}")
    items = list(value)
    for item in items:
        if isinstance(item, bool) or not _is_integral(item):
            raise ValueError(
                f"expected a list of integers like [1, 2, 3], got {value!r}"
            )
    return Coordinate(int(item) for item in items)


def _is_integral(item: Any) -> bool:
    if isinstance(item, int):
        return True
    if isinstance(item, float):
        return item.is_integer()
    return hasattr(item, "__index__")


def _to_roi(value: Any) -> Roi:
    if isinstance(value, Roi):
        return value
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(
            "expected a Roi or an (offset, shape) pair like "
            f"[[0, 0, 0], [100, 100, 100]], got {value!r}"
        )
    offset, shape = _to_coordinate(value[0]), _to_coordinate(value[1])
    if offset.dims != shape.dims:
        raise ValueError(
            f"offset {tuple(offset)} and shape {tuple(shape)} of a Roi need the "
            "same number of dimensions"
        )
    return Roi(offset, shape)


class _CoordinateAnnotation:
    @classmethod
    def __get_pydantic_core_schema__(
        cls, _source: Any, _handler: Any
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _to_coordinate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda c: [int(v) for v in c]
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, _schema: Any, _handler: Any) -> dict:
        return {"type": "array", "items": {"type": "integer"}}


class _RoiAnnotation:
    @classmethod
    def __get_pydantic_core_schema__(
        cls, _source: Any, _handler: Any
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _to_roi,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda r: [[int(v) for v in r.offset], [int(v) for v in r.shape]]
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, _schema: Any, _handler: Any) -> dict:
        coordinate = {"type": "array", "items": {"type": "integer"}}
        return {
            "type": "array",
            "prefixItems": [coordinate, coordinate],
            "minItems": 2,
            "maxItems": 2,
            "description": "[offset, shape] in world units",
        }


PydanticCoordinate = Annotated[Coordinate, _CoordinateAnnotation]
"""A `funlib.geometry.Coordinate` field; accepts a Coordinate or a list of ints."""

PydanticRoi = Annotated[Roi, _RoiAnnotation]
"""A `funlib.geometry.Roi` field; accepts a Roi or an ``[offset, shape]`` pair."""


class StrictBaseModel(BaseModel):
    """The base of every volara config: unknown fields are an error, so a typo
    in a JSON/YAML config is reported instead of silently ignored."""

    model_config = ConfigDict(
        extra="forbid", arbitrary_types_allowed=True, use_attribute_docstrings=True
    )


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_identifier(value: str, what: str) -> str:
    """Refuse anything but a plain SQL identifier.

    funlib.persistence builds its SQL by string formatting, so a table, column
    or database name is only safe when it cannot carry SQL of its own.
    """
    if not isinstance(value, str) or not _IDENTIFIER.match(value) or len(value) > 63:
        raise ValueError(
            f"{what} {value!r} is not a valid identifier: use letters, digits and "
            "underscores only, starting with a letter or underscore (at most 63 "
            "characters)"
        )
    return value


def as_coordinate(value: Coordinate | Sequence[int] | int, dims: int) -> Coordinate:
    """A Coordinate of ``dims`` dimensions from a Coordinate, sequence or scalar."""
    if isinstance(value, int):
        return Coordinate((value,) * dims)
    return Coordinate(value)
