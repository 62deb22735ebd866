"""The documentation, built as ``.ci/run`` builds it (``sphinx-build -W``):
every model with its fields, every command with its options, and every
tutorial with the pictures it drew during the build.

The build takes about two and a half minutes on two cores (the tutorials
run in it). With ``VOLARA_DOCS_HTML`` naming a finished build, the tests
read that one instead of building.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from pydantic import BaseModel

from volara import datasets, dbs, lut, models, workers
from volara.blockwise import BUILTIN_TASKS, BlockwiseTask, GridTask
from volara.cli import cli

pytest.importorskip(
    "sphinx", reason='the documentation needs Sphinx: pip install -e ".[docs]"'
)

pytestmark = pytest.mark.slow

DOCS = Path(__file__).parent.parent / "docs"
TUTORIALS = ["segmentation", "tuning", "predict", "custom-task", "cluster"]
MODELS: list[type[BaseModel]] = [
    datasets.Raw,
    datasets.Affs,
    datasets.Labels,
    datasets.LSD,
    datasets.CloudVolumeWrapper,
    dbs.SQLite,
    dbs.PostgreSQL,
    lut.LUT,
    models.TorchModel,
    workers.LocalWorker,
    workers.SlurmWorker,
    workers.LSFWorker,
    BlockwiseTask,
    GridTask,
    *BUILTIN_TASKS,
]


@pytest.fixture(scope="module")
def built(request, tmp_path_factory) -> Path:
    given = os.environ.get("VOLARA_DOCS_HTML")
    if given:
        # relative to where pytest started (each test runs in its tmp_path)
        html_dir = request.config.invocation_params.dir / given
        if not (html_dir / "index.html").exists():
            pytest.fail(f"VOLARA_DOCS_HTML={given}: no index.html in {html_dir}")
        return html_dir
    out = tmp_path_factory.mktemp("html")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return out


def page_text(path: Path) -> str:
    """The text of an HTML page, whitespace collapsed."""
    text = html.unescape(re.sub(r"<[^>]+>", " ", path.read_text()))
    return " ".join(text.split())


def entry(page: str, anchor: str) -> tuple[str, str]:
    """The signature (the ``<dt>`` with id ``anchor``) and the description
    (its ``<dd>``) of an object on a page, as text."""
    match = re.search(
        rf'<dt[^>]*id="{re.escape(anchor)}"[^>]*>(.*?)</dt>\s*<dd>(.*?)</dd>',
        page,
        re.S,
    )
    assert match, f"no entry {anchor}"
    signature, description = (
        " ".join(html.unescape(re.sub(r"<[^>]+>", " ", part)).split())
        for part in match.groups()
    )
    return signature, description


def letters(text: str) -> str:
    """Only the letters and digits of ``text``: markup and the spaces around
    it differ between a docstring and its page."""
    return re.sub(r"[^0-9A-Za-z]+", "", html.unescape(text))


def opening(docstring: str, count: int = 8) -> str:
    """The letters of the first words of a docstring."""
    return letters(" ".join(docstring.split()[:count]))


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_reference_has_every_model_with_its_fields(built, model):
    page = (built / "reference.html").read_text()
    # tasks are documented where they are imported from
    module = (
        "volara.blockwise" if issubclass(model, BlockwiseTask) else model.__module__
    )
    name = f"{module}.{model.__name__}"
    assert f'id="{name}"' in page, f"{name} is not documented"
    for field_name, field in model.model_fields.items():
        signature, description = entry(page, f"{name}.{field_name}")
        assert re.match(rf"field {field_name} ?: \S", signature), signature  # its type
        if field.is_required():
            assert "[Required]" in signature, signature
        elif field.default_factory is not None:
            assert "[Optional]" in signature, signature
        elif field.default is None or isinstance(field.default, int | float):
            assert f"= {field.default!r}" in signature, signature
        else:
            assert "=" in signature, signature
        if field.description:
            assert opening(field.description) in letters(description), field_name


@pytest.mark.parametrize("name", ["", *sorted(cli.commands)])
def test_cli_page_has_every_command_and_option(built, name):
    command = cli.commands[name] if name else cli
    page = (built / "cli.html").read_text()
    text = letters(page_text(built / "cli.html"))
    prefix = "-".join(filter(None, ["volara-cli", name]))
    assert f'<section id="{prefix}"' in page
    if command.help:
        assert opening(command.help) in text
    for param in command.params:
        if isinstance(param, click.Argument):
            assert f'id="cmdoption-{prefix}-arg-{param.human_readable_name}"' in page
            continue
        for opt in param.opts:
            assert f'id="cmdoption-{prefix}-{opt.lstrip("-")}"' in page, opt
        assert isinstance(param, click.Option)
        if param.help:
            assert opening(param.help) in text, param.opts


@pytest.mark.parametrize("tutorial", TUTORIALS)
def test_tutorials_show_the_pictures_they_drew(built, tutorial):
    page = built / "tutorials" / f"{tutorial}.html"
    images = re.findall(r'<img [^>]*src="([^"]+)"', page.read_text())
    assert images, f"{tutorial} shows no picture"
    for source in images:
        picture = (page.parent / source).resolve()
        assert picture.exists(), source
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert picture.stat().st_size > 5_000


@pytest.mark.parametrize(
    "tutorial, output",
    [
        ("segmentation", "fragments-extract-frags: 12 of 12 blocks done"),
        ("segmentation", "adapted Rand error"),
        ("tuning", "$ volara-cli evaluate sample.zarr/segments sample.zarr/labels"),
        ("tuning", "graph-mws.weights.adj_weight.1"),
        ("predict", "$ volara-cli evaluate sample.zarr/segments"),
        ("predict", "pred_affs-predict (predict): 8 blocks"),
        ("custom-task", "largest difference to smoothing the whole volume"),
        ("custom-task", "smoothed_more-smooth"),
        ("cluster", "segments-relabel (relabel): 8 of 8 blocks done, 0 failed; done"),
        ("cluster", "worker_type: slurm"),
    ],
)
def test_tutorials_show_what_they_printed(built, tutorial, output):
    # code blocks are highlighted: compare letters and digits only
    assert letters(output) in letters(
        page_text(built / "tutorials" / f"{tutorial}.html")
    )


def test_index_shows_the_demo_picture(built):
    page = (built / "index.html").read_text()
    assert '<img alt="sections of generated sample data' in page
    assert (built / "_images" / "demo.png").exists()


def test_a_failing_tutorial_stops_the_build_with_its_output(tmp_path):
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        from sphinx.errors import ExtensionError
        from tutorials import run_tutorial
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    script = tmp_path / "broken.py"
    script.write_text("print('made it this far')\nraise ValueError('no data')\n")
    with pytest.raises(ExtensionError) as error:
        run_tutorial(script, tmp_path / "output")
    message = str(error.value)
    assert "tutorial broken.py failed (exit code 1)" in message
    assert "made it this far" in message and "ValueError: no data" in message
