"""``volara-cli`` in real subprocesses: running YAML/JSON pipelines, serial
runs, dry runs, cluster-style workers, and bad configs refused before any
block runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import yaml
from click.testing import CliRunner

from conftest import write_array
from volara.blockwise import Relabel, Threshold
from volara.blockwise.registry import dump_config, pipeline_config
from volara.cli import cli
from volara.datasets import Labels, Raw
from volara.lut import LUT
from volara.workers import LocalWorker

BIN_DIR = Path(sys.executable).parent
VOLARA_CLI = BIN_DIR / "volara-cli"
RNG = np.random.default_rng(3)


def cli_env() -> dict[str, str]:
    # LocalWorker starts `volara-cli`: it must be on PATH for the workers
    return dict(
        os.environ, PATH=os.pathsep.join([str(BIN_DIR), os.environ.get("PATH", "")])
    )


def run_cli(args: list[str], cwd: Path, console_script: bool = False):
    command = (
        [str(VOLARA_CLI)] if console_script else [sys.executable, "-m", "volara.cli"]
    )
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def make_pipeline(tmp_path: Path, num_workers: int = 1):
    raw = RNG.random((4, 8, 8)).astype(np.float32)
    write_array(tmp_path / "d.zarr/raw", raw, voxel_size=(2, 1, 1))
    LUT(path=tmp_path / "lut").save(np.array([[0, 1], [3, 5]]))
    threshold = Threshold(
        in_data=Raw(store="d.zarr/raw"),
        mask=Labels(store="d.zarr/mask"),
        threshold=0.3,
        block_size=[2, 4, 4],
        num_workers=num_workers,
    )
    relabel = Relabel(
        frags_data=Labels(store="d.zarr/mask"),
        seg_data=Labels(store="d.zarr/seg"),
        lut=LUT(path="lut"),
        block_size=[2, 4, 4],
        num_workers=num_workers,
    )
    return threshold + relabel, np.where(raw > 0.3, 5, 3)


def segments(tmp_path: Path) -> np.ndarray:
    array = Labels(store=tmp_path / "d.zarr/seg").array()
    return array.to_ndarray(array.roi)


def test_run_yaml_pipeline_with_python_m(tmp_path):
    pipeline, expected = make_pipeline(tmp_path)
    dump_config(pipeline_config(pipeline), tmp_path / "pipeline.yaml")
    result = run_cli(["run", "pipeline.yaml", "--log-dir", "logs"], tmp_path)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(segments(tmp_path), expected)
    assert (tmp_path / "logs" / "seg-relabel-meta" / "blocks_done.zarr").exists()


def test_run_json_pipeline_serially_with_the_console_script(tmp_path):
    assert VOLARA_CLI.exists(), f"volara-cli is not installed next to {sys.executable}"
    pipeline, expected = make_pipeline(tmp_path)
    dump_config(pipeline_config(pipeline), tmp_path / "pipeline.json")
    result = run_cli(
        ["run", "--serial", "pipeline.json"], tmp_path, console_script=True
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(segments(tmp_path), expected)
    # the default log directory is ./volara_logs
    assert (
        tmp_path / "volara_logs" / "mask-threshold-meta" / "blocks_done.zarr"
    ).exists()
    # a rerun finds everything done
    again = run_cli(["run", "--serial", "pipeline.json"], tmp_path, console_script=True)
    assert again.returncode == 0, again.stderr
    assert (
        "mask-threshold ✔        8           8        8" in again.stdout + again.stderr
    )


def test_dry_run_lists_tasks_and_writes_nothing(tmp_path):
    pipeline, _ = make_pipeline(tmp_path)
    dump_config(pipeline_config(pipeline), tmp_path / "pipeline.yaml")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = run_cli(
        ["run", "--dry-run", "pipeline.yaml"], tmp_path, console_script=True
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines == [
        "mask-threshold (threshold): 8 blocks; writes d.zarr/mask; after -",
        # its input is written by the first task: unknown extent yet
        "seg-relabel (relabel): ? blocks; writes d.zarr/seg; after mask-threshold",
    ]
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before


def test_local_worker_runs_blockwise_worker_processes(tmp_path):
    raw = RNG.random((4, 8, 8)).astype(np.float32)
    write_array(tmp_path / "d.zarr/raw", raw)
    task = Threshold(
        in_data=Raw(store=tmp_path / "d.zarr/raw"),
        mask=Labels(store=tmp_path / "d.zarr/mask"),
        threshold=0.5,
        block_size=[2, 4, 4],
        num_workers=2,
        worker_config=LocalWorker(),
    )
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = cli_env()["PATH"]
    try:
        state = task.run_blockwise(multiprocessing=True)[task.task_name]
    finally:
        os.environ["PATH"] = old_path
    assert state.completed_count == state.total_block_count == 8
    assert state.failed_count == 0
    mask = task.mask.array()
    np.testing.assert_array_equal(mask.to_ndarray(mask.roi), raw > 0.5)
    # the workers were built from the saved config
    assert Threshold.model_validate_json(task.config_file.read_text()) == task


# --------------------------------------------------------------- bad configs
# In process through click's runner: these fail before any worker starts,
# and a subprocess per case would mostly measure import time.


def invoke(args: list[str]):
    return CliRunner().invoke(cli, args)


def write_yaml(path: Path, data) -> None:
    path.write_text(yaml.safe_dump(data))


def assert_refused(tmp_path: Path, result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    # a clean message, not a crash with a traceback
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert not (tmp_path / "d.zarr" / "seg").exists()
    assert not list(tmp_path.glob("volara_logs/*/blocks_done.zarr"))


def test_wrong_field_type_is_refused(tmp_path):
    pipeline, _ = make_pipeline(tmp_path)
    config = pipeline_config(pipeline)
    config["tasks"][0]["threshold"] = "high"
    config["tasks"][1]["block_size"] = "big"
    write_yaml(tmp_path / "pipeline.yaml", config)
    result = invoke(["run", "pipeline.yaml"])
    assert_refused(tmp_path, result, "pipeline.yaml", "threshold", "valid number")
    assert not (tmp_path / "d.zarr" / "mask").exists()


def test_unknown_task_type_is_refused(tmp_path):
    pipeline, _ = make_pipeline(tmp_path)
    config = pipeline_config(pipeline)
    config["tasks"][1]["task_type"] = "relable"
    write_yaml(tmp_path / "pipeline.yaml", config)
    result = invoke(["run", "pipeline.yaml"])
    assert_refused(tmp_path, result, "unknown task_type 'relable'", "relabel")


def test_missing_input_dataset_is_refused(tmp_path):
    pipeline, _ = make_pipeline(tmp_path)
    config = pipeline_config(pipeline)
    config["tasks"][0]["in_data"]["store"] = "d.zarr/no_such_raw"
    write_yaml(tmp_path / "pipeline.yaml", config)
    result = invoke(["run", "pipeline.yaml"])
    assert_refused(tmp_path, result, "Raw.store: no zarr array at d.zarr/no_such_raw")


def test_unwritable_output_is_refused(tmp_path):
    pipeline, _ = make_pipeline(tmp_path)
    (tmp_path / "afile").write_text("a file, not a directory")
    config = pipeline_config(pipeline)
    config["tasks"][1]["seg_data"]["store"] = "afile/seg.zarr"
    write_yaml(tmp_path / "pipeline.yaml", config)
    result = invoke(["run", "--serial", "pipeline.yaml"])
    assert_refused(tmp_path, result, "afile/seg.zarr", "writable")


def test_not_a_mapping_is_refused(tmp_path):
    (tmp_path / "pipeline.yaml").write_text(
        textwrap.dedent("""\
        - just
        - a list
        """)
    )
    result = invoke(["run", "pipeline.yaml"])
    assert_refused(tmp_path, result, "mapping")


def test_blockwise_worker_needs_an_existing_config(tmp_path):
    result = invoke(["blockwise-worker", "-c", "missing.json"])
    assert result.exit_code != 0
    assert "missing.json" in result.stderr
