"""Geometry types for pydantic models and the strict base model of every config.

`PydanticCoordinate` and `PydanticRoi` let a field hold a real
`funlib.geometry.Coordinate` / `Roi` while accepting plain lists from JSON and
YAML, and writing plain lists back. A `Roi` is written as
``[[offset...], [shape...]]`` in world units.

`PydanticCallable` lets a field hold a user function that survives the trip
through a JSON config to a cluster worker (see its docstring for how).
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib
import pickle
import re
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import packages_distributions
from types import ModuleType
from typing import Annotated, Any, Literal

import cloudpickle
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


# -------------------------------------------------------------- callables

_REFERENCE = re.compile(
    r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$"
)


class FunctionReference:
    """A function named ``"package.module:function"``, imported when created.

    Calling it calls the function. It is saved (in configs, and when pickled
    for worker processes) as its name only, so loading it runs nothing but the
    import.
    """

    def __init__(self, reference: str):
        self.reference = reference
        self.function = _import_function(reference)
        # lets inspect.signature see the function's own parameters
        self.__wrapped__ = self.function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return FunctionReference, (self.reference,)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, FunctionReference) and other.reference == self.reference
        )

    def __hash__(self) -> int:
        return hash(self.reference)

    def __repr__(self) -> str:
        return f"FunctionReference({self.reference!r})"


def _import_function(reference: str) -> Callable[..., Any]:
    module_name, _, qualname = reference.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"cannot import module {module_name!r} named in {reference!r} ({e}); "
            "the module must be installed wherever the task runs"
        ) from e
    for attribute in qualname.split("."):
        if not hasattr(target, attribute):
            raise ValueError(f"module {module_name!r} has no {qualname!r}")
        target = getattr(target, attribute)
    if not callable(target):
        raise ValueError(f"{reference!r} is a {type(target).__name__}, not a function")
    return target


def _unpickle_function(text: str) -> Callable[..., Any]:
    try:
        payload = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "expected a function, a 'package.module:function' name, or a "
            f"base64-encoded cloudpickled function; got {text[:40]!r}"
        ) from None
    try:
        function = pickle.loads(payload)
    except ModuleNotFoundError as e:
        raise ValueError(
            f"the pickled function needs module {e.name!r}, which cannot be "
            "imported here: install it where the task runs, or name the function "
            "as 'package.module:function'"
        ) from e
    except Exception as e:
        raise ValueError(f"cannot unpickle the function ({e!r})") from e
    if not callable(function):
        raise ValueError(f"the pickled object is a {type(function).__name__}")
    return function


def _to_callable(value: Any) -> Callable[..., Any]:
    if callable(value):
        return value
    if isinstance(value, str):
        if _REFERENCE.match(value):
            return FunctionReference(value)
        return _unpickle_function(value)
    raise ValueError(
        "expected a function, a 'package.module:function' name, or a "
        f"base64-encoded cloudpickled function; got a {type(value).__name__}"
    )


@functools.cache
def _installed_top_level_modules() -> frozenset[str]:
    return frozenset(packages_distributions())


def _module_to_ship_by_value(function: Callable[..., Any]) -> ModuleType | None:
    # cloudpickle stores a function of an importable module by name. Workers
    # import installed packages and the standard library like this process
    # does, but not a test module or a helper file next to a script, whose
    # functions must therefore travel by value.
    name = getattr(function, "__module__", None)
    if not isinstance(name, str) or name == "__main__" or name not in sys.modules:
        return None
    top_level = name.partition(".")[0]
    if (
        top_level in sys.stdlib_module_names
        or top_level in _installed_top_level_modules()
        or name in cloudpickle.list_registry_pickle_by_value()
    ):
        return None
    return sys.modules[name]


def _callable_to_text(function: Callable[..., Any]) -> str:
    if isinstance(function, FunctionReference):
        return function.reference
    module = _module_to_ship_by_value(function)
    if module is not None:
        cloudpickle.register_pickle_by_value(module)
    try:
        payload = cloudpickle.dumps(function)
    finally:
        if module is not None:
            cloudpickle.unregister_pickle_by_value(module)
    return base64.b64encode(payload).decode("ascii")


class _CallableAnnotation:
    @classmethod
    def __get_pydantic_core_schema__(
        cls, _source: Any, _handler: Any
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _to_callable,
            serialization=core_schema.plain_serializer_function_ser_schema(
                _callable_to_text, when_used="json"
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, _schema: Any, _handler: Any) -> dict:
        return {
            "type": "string",
            # volara 1.0.5's format name, for tools that read its schemas
            "format": "base64-cloudpickle",
            "description": (
                "'package.module:function', or a function pickled with "
                "cloudpickle and base64-encoded (loading it executes arbitrary "
                "code: only load configs you trust)"
            ),
        }


PydanticCallable = Annotated[Callable[..., Any], _CallableAnnotation]
"""A function field that survives JSON configs and worker processes.

Accepts a Python callable, or text as found in a config:

- ``"package.module:function"``: the function is imported by name, here and
  on every worker (which must have the package installed). Loading runs
  nothing but that import: the safe choice for shared configs.
- a base64-encoded cloudpickle of a function, as volara 1 wrote them.
  **Unpickling executes code: only load configs you trust.**

A callable is written back as its ``"module:function"`` name if it was given
as one, otherwise pickled: by name when it comes from an installed package or
the standard library, by value (code and all) when it comes from a script, a
notebook, a test module or a lambda. Workers need the same Python version and
packages to unpickle it.
"""


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
