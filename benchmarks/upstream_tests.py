"""Run volara 1.0.5's own test suite against the volara installed here.

volara 2 keeps volara 1.0.5's public API; the most direct check is 1.0.5's
own tests. Its PyPI sdist ships ``tests/`` but no ``conftest.py``, so this
script:

1. downloads the sdist (``pip download --no-deps --no-binary :all:
   volara==1.0.5``) into a temporary directory, or takes one given with
   ``--sdist``;
2. extracts only its ``tests/`` there;
3. writes a ``conftest.py`` with the fixtures those tests use (written for
   this script, see ``CONFTEST`` below; every test also runs in its own
   directory with its own volara log directory);
4. runs pytest on them with ``--python`` (default: this interpreter), so
   against whichever volara that interpreter imports;
5. prints the passed / failed counts and the failing test ids grouped by
   cause (the first line of the error, with paths and numbers that differ
   between tests blanked out).

Nothing of upstream is copied into this repository: everything lives in the
temporary directory, which is removed afterwards (``--keep DIR`` keeps it).

A test module that fails to import is not collected, so pytest cannot say
how many tests it holds; its tests are counted from the module's source
(each ``test_*`` function times the product of its literal
``parametrize`` lists) and reported as failed with the import error as the
cause.

    python benchmarks/upstream_tests.py                     # volara 2
    python benchmarks/upstream_tests.py --python /work/v1venv/bin/python
    python benchmarks/upstream_tests.py --json              # machine-readable
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

VERSION = "1.0.5"

CONFTEST = '''\
"""Fixtures for volara 1.0.5's test suite (its sdist ships none), written by
volara 2's benchmarks/upstream_tests.py. Plain data: 10 x 10 volumes of
voxel size (1, 1) in <tmp_path>/test.zarr, a SQLite graph and one daisy
block covering them."""

import daisy
import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate, Roi
from funlib.persistence import prepare_ds

import volara.logging

NEIGHBORHOOD_2D = [[1, 0], [0, 1]]


def _write(path, data, attrs=None):
    array = prepare_ds(
        path, shape=data.shape, voxel_size=Coordinate(1, 1), dtype=data.dtype,
        mode="w",
    )
    array[:] = data
    if attrs:
        zarr.open_array(str(path), mode="r+").attrs.update(attrs)
    return path


def _label_affinities(labels, neighborhood):
    """1 where a voxel and its neighbor along the offset share a non-zero
    label, else 0; channel c pairs voxel x with x + neighborhood[c]."""
    affs = np.zeros((len(neighborhood), *labels.shape), dtype=np.float32)
    for channel, offset in enumerate(neighborhood):
        for index in np.ndindex(labels.shape):
            other = tuple(i + o for i, o in zip(index, offset))
            if all(0 <= i < s for i, s in zip(other, labels.shape)):
                same = labels[index] == labels[other] and labels[index] != 0
                affs[(channel, *index)] = float(same)
    return affs


def _quadrants():
    labels = np.zeros((10, 10), dtype=np.uint64)
    labels[:5, :5], labels[:5, 5:] = 1, 2
    labels[5:, :5], labels[5:, 5:] = 3, 4
    return labels


@pytest.fixture(autouse=True)
def _own_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    volara.logging.set_log_basedir(tmp_path / "volara_logs")
    yield


@pytest.fixture
def zarr_2d(tmp_path):
    """Raw intensities: random float32 in [0, 1)."""
    data = np.random.default_rng(11).random((10, 10), dtype=np.float32)
    return _write(tmp_path / "test.zarr" / "raw", data), data


@pytest.fixture
def labels_2d(tmp_path):
    """Four 5 x 5 quadrants labelled 1, 2 (top) and 3, 4 (bottom)."""
    data = _quadrants()
    return _write(tmp_path / "test.zarr" / "labels", data), data


@pytest.fixture
def frags_2d(tmp_path):
    """Ten horizontal stripes: row i holds fragment i + 1."""
    data = np.repeat(np.arange(1, 11, dtype=np.uint64)[:, None], 10, axis=1)
    return _write(tmp_path / "test.zarr" / "frags", data), data


@pytest.fixture
def affs_2d(tmp_path):
    """Affinities of the quadrant labels along (1, 0) and (0, 1)."""
    data = _label_affinities(_quadrants(), NEIGHBORHOOD_2D)
    path = _write(
        tmp_path / "test.zarr" / "affs", data, {"neighborhood": NEIGHBORHOOD_2D}
    )
    return path, data


@pytest.fixture
def block_2d():
    roi = Roi((0, 0), (10, 10))
    return daisy.Block(total_roi=roi, read_roi=roi, write_roi=roi, block_id=0)


@pytest.fixture
def sqlite_db_2d(tmp_path):
    """An initialized, empty 2D graph database with a one-value node
    attribute raw_intensity and an edge attribute y_aff."""
    from volara.dbs import SQLite

    db = SQLite(
        path=tmp_path / "test.zarr" / "db.sqlite",
        ndim=2,
        node_attrs={"raw_intensity": 1},
        edge_attrs={"y_aff": "float"},
    )
    db.init()
    return db


class BulkRuns:
    """ExtractFrags and AffAgglom over one 20 x 20 volume of twelve cells,
    each run writing to its own fragments array and database, named by a
    tag. Affinities are 0.9 inside a cell; across the border of two cells
    they are one value between 0.1 and 0.4 per pair of cells, so a pair's
    mean affinity is the same over any part of its border."""

    bias = [-0.5, -0.5]

    def __init__(self, root):
        self.root = root
        rows, cols = [0, 6, 13, 20], [0, 4, 11, 16, 20]
        labels = np.zeros((20, 20), dtype=np.uint64)
        for i in range(3):
            for j in range(4):
                labels[rows[i]:rows[i + 1], cols[j]:cols[j + 1]] = 4 * i + j + 1
        affs = np.full((2, 20, 20), 0.9, dtype=np.float32)
        for channel, (dz, dy) in enumerate(NEIGHBORHOOD_2D):
            here = labels[: 20 - dz, : 20 - dy]
            there = labels[dz:, dy:]
            pair_value = 0.1 + 0.3 * ((7 * here + 3 * there) % 10) / 10
            affs[channel, : 20 - dz, : 20 - dy] = np.where(
                here == there, 0.9, pair_value
            )
        self.affs_path = _write(
            root / "bulk.zarr" / "affs", affs, {"neighborhood": NEIGHBORHOOD_2D}
        )

    def db(self, tag):
        from volara.dbs import SQLite

        return SQLite(
            path=self.root / f"bulk-{tag}.sqlite", ndim=2, edge_attrs={"aff": "float"}
        )

    def _frags(self, tag):
        from volara.datasets import Labels

        return Labels(store=self.root / "bulk.zarr" / f"frags-{tag}")

    def extract_frags(self, db, tag, bulk_write, block_size, context):
        from volara.blockwise import ExtractFrags
        from volara.datasets import Affs

        task = ExtractFrags(
            db=db,
            affs_data=Affs(store=self.affs_path),
            frags_data=self._frags(tag),
            block_size=block_size,
            context=context,
            bias=self.bias,
            bulk_write=bulk_write,
        )
        task.run_blockwise(multiprocessing=False)
        return task.frags_data.array("r")[:]

    def aff_agglom(self, db, tag, bulk_write, block_size, context):
        from volara.blockwise import AffAgglom
        from volara.datasets import Affs

        task = AffAgglom(
            db=db,
            affs_data=Affs(store=self.affs_path),
            frags_data=self._frags(tag),
            block_size=block_size,
            context=context,
            scores={"aff": [Coordinate(1, 0), Coordinate(0, 1)]},
            bulk_write=bulk_write,
        )
        task.run_blockwise(multiprocessing=False)

    def pipeline(self, tag, bulk_write, block_size, context):
        db = self.db(tag)
        frags = self.extract_frags(db, tag, bulk_write, block_size, context)
        self.aff_agglom(db, tag, bulk_write, block_size, context)
        return db, frags

    @staticmethod
    def edges(db):
        graph = db.open("r").read_graph()
        return {
            (min(int(u), int(v)), max(int(u), int(v))): dict(data)
            for u, v, data in graph.edges(data=True)
        }

    @staticmethod
    def nodes(db):
        graph = db.open("r").read_graph()
        return {int(n): dict(data) for n, data in graph.nodes(data=True)}


@pytest.fixture
def bulk(tmp_path):
    return BulkRuns(tmp_path)
'''


# ------------------------------------------------------------------ sdist


def download_sdist(version: str, into: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"volara=={version}",
        "-d",
        str(into),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    sdists = list(into.glob(f"volara-{version}.tar.gz"))
    if done.returncode != 0 or not sdists:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return sdists[0]


def extract_tests(sdist: Path, into: Path) -> Path:
    """Extract the sdist's ``tests/`` (only) to ``into/tests``."""
    tests = into / "tests"
    with tarfile.open(sdist) as archive:
        members = []
        for member in archive.getmembers():
            parts = Path(member.name).parts
            if len(parts) > 2 and parts[1] == "tests" and member.isfile():
                member.name = str(Path(*parts[1:]))
                members.append(member)
        archive.extractall(into, members=members, filter="data")
    if not any(tests.glob("test_*.py")):
        raise RuntimeError(f"{sdist} holds no tests/test_*.py")
    (tests / "conftest.py").write_text(CONFTEST)
    return tests


# ------------------------------------------------------------------ running


def run_pytest(
    python: str, tests: Path, workdir: Path, extra: list[str], timeout: float
) -> Path:
    report = workdir / "report.xml"
    command = [
        python,
        "-m",
        "pytest",
        str(tests),
        "-q",
        "-p",
        "no:cacheprovider",
        "--continue-on-collection-errors",
        "-o",
        "addopts=",
        "-o",
        "junit_family=xunit2",
        f"--rootdir={workdir}",
        f"--junitxml={report}",
        *extra,
    ]
    # tests start `volara-cli` workers by name: find the tested one first
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(python).parent), env.get("PATH", "")])
    log = workdir / "pytest.log"
    with log.open("w") as out:
        subprocess.run(
            command,
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
    if not report.exists():
        raise RuntimeError(f"pytest wrote no report; its output:\n{log.read_text()}")
    return report


# ------------------------------------------------------------------ results

_BLANKS = [
    (re.compile(r"/tmp/[^\s'\"),]*"), "<tmp>"),
    (re.compile(r"0x[0-9a-f]+"), "0x…"),
    (re.compile(r"\s+"), " "),
    (re.compile(r"For further information visit \S+"), ""),
    (re.compile(r"\[type=(\w+)[^\]]*\]"), r"[\1]"),
]


def cause(message: str) -> str:
    """One line naming why a test failed, the same for tests failing alike."""
    text = message.strip()
    wrapped = re.match(r"^failed on (?:setup|teardown) with \"(.*)\"$", text, re.S)
    if wrapped:
        text = wrapped.group(1)
    for pattern, replacement in _BLANKS:
        text = pattern.sub(replacement, text)
    text = text.strip()
    return text[:200] + ("…" if len(text) > 200 else "")


def read_report(report: Path) -> dict[str, Any]:
    outcomes: dict[str, list[str]] = defaultdict(list)
    failures: dict[str, list[str]] = defaultdict(list)
    for case in ET.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "")
        if not module:
            continue  # a module that failed to import: see collection_errors
        test_id = f"{module.rsplit('.', 1)[-1]}::{case.get('name')}"
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            outcomes["failed"].append(test_id)
            failures[cause(problem.get("message") or problem.text or "")].append(
                test_id
            )
        elif case.find("skipped") is not None:
            kind = case.find("skipped").get("type", "")  # type: ignore[union-attr]
            outcomes["xfailed" if "xfail" in kind else "skipped"].append(test_id)
        else:
            outcomes["passed"].append(test_id)
    return {"outcomes": outcomes, "failures": failures}


def collection_errors(report: Path) -> dict[str, str]:
    """Test modules pytest could not import: module name -> error."""
    errors = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        problem = case.find("error")
        if problem is not None and not case.get("classname"):
            text = problem.text or problem.get("message") or ""
            lines = [line[1:] for line in text.splitlines() if line.startswith("E ")]
            errors[case.get("name", "")] = lines[-1] if lines else text[-200:]
    return errors


def count_tests(path: Path) -> int:
    """Tests a module would hold: each test function times the product of
    the lengths of its literal ``parametrize`` lists."""
    total = 0
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if not node.name.startswith("test"):
            continue
        count = 1
        for decorator in node.decorator_list:
            if (
                isinstance(decorator, ast.Call)
                and getattr(decorator.func, "attr", "") == "parametrize"
                and len(decorator.args) > 1
                and isinstance(decorator.args[1], ast.List | ast.Tuple)
            ):
                count *= len(decorator.args[1].elts)
        total += count
    return total


def summarize(report: Path, tests: Path) -> dict[str, Any]:
    results = read_report(report)
    outcomes, failures = results["outcomes"], results["failures"]
    for module, error in collection_errors(report).items():
        name = module.rsplit(".", 1)[-1]
        source = tests / f"{name}.py"
        count = count_tests(source) if source.exists() else 1
        outcomes["failed"].extend(f"{name}::<not collected #{i}>" for i in range(count))
        failures[cause(f"import: {error}")].append(
            f"{name}::<{count} tests, not collected>"
        )
    counts = {kind: len(ids) for kind, ids in outcomes.items()}
    counts["total"] = sum(counts.values())
    grouped = sorted(failures.items(), key=lambda item: (-len(item[1]), item[0]))
    return {
        "counts": counts,
        "failures": [{"cause": c, "tests": sorted(ids)} for c, ids in grouped],
    }


def failure_count(ids: list[str]) -> int:
    count = 0
    for test_id in ids:
        match = re.search(r"<(\d+) tests, not collected>", test_id)
        count += int(match.group(1)) if match else 1
    return count


def print_summary(summary: dict[str, Any], python: str) -> None:
    counts = summary["counts"]
    print(f"volara {VERSION}'s test suite against {python}:")
    print(
        "  "
        + ", ".join(
            f"{counts.get(kind, 0)} {kind}"
            for kind in ("passed", "failed", "skipped", "xfailed")
        )
        + f" (of {counts['total']})"
    )
    for group in summary["failures"]:
        print(f"\n[{failure_count(group['tests'])}] {group['cause']}")
        for test_id in group["tests"]:
            print(f"    {test_id}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter whose volara is tested (default: this one)",
    )
    parser.add_argument("--version", default=VERSION, help="volara sdist version")
    parser.add_argument("--sdist", type=Path, help="use this sdist, do not download")
    parser.add_argument("--keep", type=Path, help="work in (and keep) this directory")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds")
    parser.add_argument("--json", action="store_true", help="print JSON instead")
    parser.add_argument("pytest_args", nargs="*", help="passed on to pytest (after --)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="volara-upstream-") as scratch:
        workdir = args.keep or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        sdist = args.sdist or download_sdist(args.version, workdir)
        tests = extract_tests(sdist, workdir)
        report = run_pytest(args.python, tests, workdir, args.pytest_args, args.timeout)
        summary = summarize(report, tests)

    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary, args.python)


if __name__ == "__main__":
    main()
