"""Multi-process data-parallel training: torchrun with 2 CPU processes (gloo backend)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT


@pytest.mark.slow
def test_torchrun_two_cpu_processes(shapes_dir, tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "cvaegan",
        "train",
        "--data",
        str(shapes_dir),
        "--out",
        str(run),
        "--resolution",
        "32",
        "--z-dim",
        "16",
        "--base-channels",
        "8",
        "--max-channels",
        "32",
        "--batch-size",
        "16",
        "--steps",
        "3",
        "--log-every",
        "1",
        "--sample-every",
        "3",
        "--checkpoint-every",
        "3",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # written once (rank 0), not once per process
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3
    assert not any(k.startswith("module.") for k in state["nets"]["G"])
    assert (run / "export" / "generator.safetensors").is_file()
