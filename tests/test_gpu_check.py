"""benchmarks/gpu_check.py, the prepared CUDA check, run on the CPU with the tiny ViT: every check
passes on a sound setup, and a failed check is printed as such and makes the exit code 1."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
CPU = ["--device", "cpu", "--model", "zscir-tiny-vit", "--batch", "8", "--steps", "2", "--images", "16",
       "--image-size", "32", "--workers", "0"]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_check_runs_and_passes_on_the_cpu(gpu_check, capsys):
    assert gpu_check.main(CPU) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines[:-1]]
    assert names == ["device", "encode", "encode", "stage1", "stage1", "stage2", "stage2", "gloo", "gloo"]
    assert all(line.endswith("  ok") for line in lines[:-1]) and lines[-1] == "all checks passed"
    assert "16 images" in lines[1] and "2 steps of 8" in lines[4]


def test_a_failed_check_is_named_and_fails_the_command(gpu_check, capsys, monkeypatch):
    monkeypatch.setattr(gpu_check, "BF16_TOLERANCE", -1.0)  # no loss can be within it
    assert gpu_check.main(CPU) == 1
    out = capsys.readouterr().out
    assert out.count("FAIL") == 2 and "stage1   first batch loss" in out and out.rstrip().endswith("2 check(s) failed")


def test_no_cuda_is_a_failed_check(gpu_check, capsys, monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--device", "cuda"]) == 1
    assert "CUDA is not available here  FAIL" in capsys.readouterr().out
