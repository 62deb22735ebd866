"""Geometry fields of configs: what they accept and how they are written."""

from __future__ import annotations

import json

import pytest
import yaml
from funlib.geometry import Coordinate, Roi
from pydantic import ValidationError

from volara.utils import (
    PydanticCoordinate,
    PydanticRoi,
    StrictBaseModel,
    as_coordinate,
    check_identifier,
)


class Geometry(StrictBaseModel):
    size: PydanticCoordinate
    region: PydanticRoi | None = None


@pytest.mark.parametrize(
    "size", [Coordinate(1, 2, 3), [1, 2, 3], (1, 2, 3), [1.0, 2.0, 3.0]]
)
def test_coordinate_field_accepts_coordinates_and_lists(size):
    model = Geometry(size=size)
    assert isinstance(model.size, Coordinate)
    assert model.size == Coordinate(1, 2, 3)


@pytest.mark.parametrize(
    "region",
    [Roi((0, 10, 20), (5, 6, 7)), [[0, 10, 20], [5, 6, 7]], ((0, 10, 20), (5, 6, 7))],
)
def test_roi_field_accepts_rois_and_lists(region):
    model = Geometry(size=[1, 1, 1], region=region)
    assert isinstance(model.region, Roi)
    assert model.region == Roi((0, 10, 20), (5, 6, 7))


def test_geometry_serializes_to_plain_lists():
    model = Geometry(size=Coordinate(1, 2, 3), region=Roi((0, 10, 20), (5, 6, 7)))
    assert model.model_dump(mode="json") == {
        "size": [1, 2, 3],
        "region": [[0, 10, 20], [5, 6, 7]],
    }
    assert json.loads(model.model_dump_json()) == {
        "size": [1, 2, 3],
        "region": [[0, 10, 20], [5, 6, 7]],
    }
    assert Geometry.model_validate_json(model.model_dump_json()) == model
    from_yaml = yaml.safe_load(yaml.safe_dump(model.model_dump(mode="json")))
    assert Geometry.model_validate(from_yaml) == model


@pytest.mark.parametrize("size", ["123", [1, "a", 3], [1.5, 2, 3], 7, [True, 1, 1]])
def test_coordinate_field_rejects_non_integer_lists(size):
    with pytest.raises(ValidationError, match="size"):
        Geometry(size=size)


@pytest.mark.parametrize(
    "region",
    [[[0, 0, 0]], [[0, 0, 0], [1, 1]], "0,0,0,1,1,1", [[0, 0, 0], [1, 1, 1], [2]]],
)
def test_roi_field_rejects_malformed_pairs(region):
    with pytest.raises(ValidationError, match="region"):
        Geometry(size=[1, 1, 1], region=region)


def test_unknown_fields_are_refused():
    with pytest.raises(ValidationError, match="sise"):
        Geometry(size=[1, 1, 1], sise=[2, 2, 2])


@pytest.mark.parametrize("name", ["nodes", "_x", "adj_weight2"])
def test_identifiers_pass(name):
    assert check_identifier(name, "name") == name


@pytest.mark.parametrize(
    "name", ["x; DROP TABLE nodes", "1abc", "a-b", "", "a b", "x" * 64, "robert'); --"]
)
def test_identifiers_with_sql_are_refused(name):
    with pytest.raises(ValueError, match="not a valid identifier"):
        check_identifier(name, "name")


def test_as_coordinate():
    assert as_coordinate(4, 3) == Coordinate(4, 4, 4)
    assert as_coordinate([1, 2], 2) == Coordinate(1, 2)


def test_a_function_field_has_a_json_schema():
    from volara.utils import PydanticCallable, StrictBaseModel

    class WithFunction(StrictBaseModel):
        function: PydanticCallable | None = None

    schema = WithFunction.model_json_schema()["properties"]["function"]
    string = next(s for s in schema["anyOf"] if s.get("type") == "string")
    assert string["format"] == "base64-cloudpickle"
    assert "arbitrary code" in string["description"]
