"""Look-up tables: save/load, missing and corrupt files, and combining tables."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from volara.lut import LUT, LUTS


def test_lut_round_trips_through_json_and_yaml(tmp_path):
    for lut in (LUT(path=tmp_path / "lut.npz"), LUT(path="relative/lut")):
        assert LUT.model_validate_json(lut.model_dump_json()) == lut
        assert (
            LUT.model_validate(
                yaml.safe_load(yaml.safe_dump(lut.model_dump(mode="json")))
            )
            == lut
        )


def test_npz_suffix_is_added(tmp_path):
    assert LUT(path=tmp_path / "lut").file == tmp_path / "lut.npz"
    assert LUT(path=tmp_path / "lut.npz").file == tmp_path / "lut.npz"


def test_save_then_load(tmp_path):
    lut = LUT(path=tmp_path / "sub" / "lut")
    table = np.array([[1, 2, 3], [10, 10, 30]])
    lut.save(table, edges=np.array([[1, 2]]))
    assert lut.exists()
    loaded = lut.load()
    assert loaded.dtype == np.uint64
    np.testing.assert_array_equal(loaded, table)
    lut.check_readable()
    lut.drop()
    assert not lut.exists()


def test_save_refuses_a_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match=r"\(2, n\)"):
        LUT(path=tmp_path / "lut").save(np.arange(6).reshape(3, 2))


def test_missing_file(tmp_path):
    lut = LUT(path=tmp_path / "nothing")
    assert lut.load() is None
    with pytest.raises(FileNotFoundError, match="no look-up table at .*nothing.npz"):
        lut.check_readable()


def test_corrupted_file_is_a_clear_value_error(tmp_path):
    (tmp_path / "lut.npz").write_bytes(b"this is not a zip file")
    lut = LUT(path=tmp_path / "lut.npz")
    with pytest.raises(ValueError, match="not a readable look-up table"):
        lut.load()
    with pytest.raises(ValueError, match="not a readable look-up table"):
        lut.check_readable()


def test_npz_without_the_table_is_a_clear_value_error(tmp_path):
    np.savez(tmp_path / "lut.npz", something_else=np.zeros(3))
    with pytest.raises(ValueError, match="fragment_segment_lut"):
        LUT(path=tmp_path / "lut.npz").load()


def test_table_of_the_wrong_shape_is_a_clear_value_error(tmp_path):
    np.savez(tmp_path / "lut.npz", fragment_segment_lut=np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"shape \(3, 4\)"):
        LUT(path=tmp_path / "lut.npz").load()


def test_luts_load_joins_tables(tmp_path):
    first, second = LUT(path=tmp_path / "a"), LUT(path=tmp_path / "b")
    first.save(np.array([[1, 2], [5, 5]]))
    second.save(np.array([[3], [6]]))
    joined = (first + second).load()
    np.testing.assert_array_equal(joined, [[1, 2, 3], [5, 5, 6]])
    # a missing table contributes nothing
    with_missing = LUTS([first, LUT(path=tmp_path / "missing"), second]).load()
    np.testing.assert_array_equal(with_missing, joined)
    assert LUTS([]).load().shape == (2, 0)


def test_luts_load_iterated_chains_tables(tmp_path):
    first, second, third = (LUT(path=tmp_path / name) for name in "abc")
    first.save(np.array([[1, 2, 3, 4], [5, 5, 6, 7]]))
    second.save(np.array([[5, 6], [9, 9]]))  # 7 has no entry: kept
    third.save(np.array([[9], [100]]))
    chained = (first + second + third).load_iterated()
    np.testing.assert_array_equal(chained, [[1, 2, 3, 4], [100, 100, 100, 7]])
    assert isinstance(first + (second + third), LUTS)
    np.testing.assert_array_equal((first + (second + third)).load_iterated(), chained)


def test_volara1_tables_and_configs_load(tmp_path):
    # volara 1.0.5 dumps LUTs with s3_kwargs and saves int64 tables next to
    # the mutex watershed edges
    lut = LUT.model_validate({"path": str(tmp_path / "lut.npz"), "s3_kwargs": None})
    np.savez_compressed(
        lut.file,
        fragment_segment_lut=np.array([[3, 4, 9], [3, 3, 9]], dtype=np.int64),
        edges=np.array([[1, 3, 4], [0, 4, 9]]),
    )
    np.testing.assert_array_equal(lut.load(), [[3, 4, 9], [3, 3, 9]])
    assert lut.uri == str(tmp_path / "lut.npz") and not lut.is_s3


def test_url_tables_are_remote_not_local_paths(tmp_path, monkeypatch):
    # an s3:// (or any fsspec) url is written through fsspec, never to a
    # local directory named "s3:"
    monkeypatch.chdir(tmp_path)
    lut = LUT(path="memory://bucket/run/lut")
    assert lut.is_s3 and lut.uri == "memory://bucket/run/lut.npz" and lut.name == "lut"
    again = LUT.model_validate_json(lut.model_dump_json())
    assert again == lut and again.path == "memory://bucket/run/lut"
    with pytest.raises(ValueError, match="has no local file"):
        lut.file  # noqa: B018
    assert not lut.exists() and lut.load() is None
    lut.save(np.array([[1, 2], [5, 5]]))
    assert lut.exists()
    np.testing.assert_array_equal(lut.load(), [[1, 2], [5, 5]])
    assert list(tmp_path.iterdir()) == []
    lut.drop()
    assert not lut.exists()
    with pytest.raises(FileNotFoundError, match="no look-up table at memory://"):
        lut.check_readable()
