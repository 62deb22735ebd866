"""``volara-cli demo --figure``: the overview picture of the demo's result,
drawn by `volara.figures`."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib import image

from test_cli import run_cli
from volara.cli import cli
from volara.figures import label_colors, pyplot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_demo_draws_its_result(tmp_path):
    result = run_cli(
        ["demo", "--workdir", "demo", "--shape", "20", "96", "96",
         "--figure", "demo.png"],
        cwd=tmp_path,
        console_script=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "figure written to demo.png" in result.stdout
    png = tmp_path / "demo.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert 10_000 < png.stat().st_size < 300_000
    pixels = image.imread(png)
    height, width, channels = pixels.shape
    # four panels side by side, three sections below each other
    assert channels in (3, 4)
    assert 400 < width < 2000 and 300 < height < 2000 and width > height
    # drawn, not blank: many colours
    assert len(np.unique(pixels.reshape(-1, channels), axis=0)) > 100


@pytest.mark.parametrize(
    "figure, message",
    [
        ("demo", "no suffix; name the format by the file's suffix"),
        ("demo.xyz", "the suffix .xyz; name the format by the file's suffix"),
        ("missing/demo.png", "missing does not exist"),
        ("a_file/demo.png", "a_file is not a directory"),
    ],
)
def test_a_figure_path_that_cannot_be_written_is_refused_first(
    tmp_path, monkeypatch, figure, message
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    result = CliRunner().invoke(cli, ["demo", "--workdir", "demo", "--figure", figure])
    assert result.exit_code == 2
    assert "Invalid value for --figure" in result.output
    assert message in " ".join(result.output.split())
    # refused before any data was generated
    assert not (tmp_path / "demo").exists()


def test_without_matplotlib_the_error_names_the_extra(monkeypatch):
    # None in sys.modules makes `import matplotlib` raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "volara\[plot\]"'):
        pyplot()


def test_label_colours_depend_only_on_the_id():
    labels = np.array([[0, 5, 5], [7, 0, 9]], dtype=np.uint64)
    colours = label_colors(labels)
    assert colours.shape == (2, 3, 3)
    assert (colours[labels == 0] == 0).all()
    assert (colours[0, 1] == colours[0, 2]).all()
    assert len({tuple(colours[0, 1]), tuple(colours[1, 0]), tuple(colours[1, 2])}) == 3
    # the same id in another image gets the same colour
    assert (label_colors(np.array([9]))[0] == colours[1, 2]).all()
