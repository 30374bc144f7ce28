"""scripts/gpu_check.sh where there is no GPU, and the comparison it prints (benchmarks.compare)."""

from __future__ import annotations

import doctest
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import compare, report
from benchmarks.report import OURS, Cell
from tschat.bench.loadgen import Summary
from tschat.settings import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.sh"
SYSTEM_PATH = "/usr/bin:/bin"


def gpu_check(*args: str, path: str = SYSTEM_PATH) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path, "HOME": "/nonexistent", "CUDA_HOME": "/nonexistent"}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60
    )


def fake_nvidia_smi(folder: Path, output: str) -> str:
    """A folder whose nvidia-smi prints ``output``; returns a PATH with it first."""
    tool = folder / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\nprintf '{output}'\n")
    tool.chmod(0o755)
    return f"{folder}:{SYSTEM_PATH}"


def test_help_and_bad_arguments() -> None:
    assert gpu_check("--help").returncode == 0
    assert "compute capability" in gpu_check("--help").stdout
    bad = gpu_check("--bogus")
    assert bad.returncode == 2 and "unknown option" in bad.stderr
    arch = gpu_check("--arch", "sm_90")
    assert arch.returncode == 2 and "such as 90" in arch.stderr


@pytest.mark.skipif(bool(shutil.which("nvidia-smi", path=SYSTEM_PATH)), reason="a GPU machine")
def test_no_gpu_is_said_in_a_sentence() -> None:
    result = gpu_check()
    assert result.returncode == 1
    assert "no NVIDIA GPU here: nvidia-smi is not installed" in result.stderr


def test_a_driver_without_a_gpu_is_said_in_a_sentence(tmp_path: Path) -> None:
    result = gpu_check(path=fake_nvidia_smi(tmp_path, ""))
    assert result.returncode == 1 and "nvidia-smi lists none" in result.stderr


@pytest.mark.skipif(bool(shutil.which("nvcc", path=SYSTEM_PATH)), reason="nvcc is installed")
def test_a_gpu_without_the_toolkit_is_said_in_a_sentence(tmp_path: Path) -> None:
    result = gpu_check(path=fake_nvidia_smi(tmp_path, "NVIDIA H200, 9.0\\n"))
    assert result.returncode == 1
    assert "the CUDA toolkit is missing: no nvcc" in result.stderr


def test_compare_two_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert doctest.testmod(compare).failed == 0
    for name, tps in (("cpu", 100.0), ("cuda", 400.0)):
        summary = Summary(8, 0, 800, 800 / tps, tps, 50.0, 90.0, 9.0, 12.0, 50.0)
        (tmp_path / name).mkdir()
        csv = report.cells_csv([Cell(OURS, "distinct", 8, summary)])
        (tmp_path / name / "peer-20260101-000000.csv").write_text(csv)
    assert (
        compare.main([str(tmp_path / "cpu"), str(tmp_path / "cuda"), "--labels", "cpu,cuda"]) == 0
    )
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == "| tschat | distinct | 8 | 100.0 | 400.0 | 4.00 | 50 | 50 | 1.00 |"
    with pytest.raises(SystemExit, match="no peer"):
        compare.read_run(tmp_path)
