"""The machine speed reference kept with every run's clock."""

import os

import pytest
import torch

from cvaegan import speed


def test_reference_runs_on_one_thread_and_restores_the_thread_count(monkeypatch):
    seen = []
    real = speed._time_conv
    monkeypatch.setattr(speed, "_time_conv", lambda r: seen.append(torch.get_num_threads()) or real(r))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gflops = speed.reference_gflops(repeats=3)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert 0 < gflops < 1e4  # a CPU thread, not a typo in the FLOP count
    assert speed.CONV_GFLOP == pytest.approx(3 * 2 * 16 * 32 * 32 * 9 * 32 * 32 / 1e9)


def test_machine_record_and_its_description():
    rec = speed.machine_record(7)
    assert rec["step"] == 7 and rec["cpu"] and rec["conv_gflops"] > 0
    assert rec["cores"] == os.cpu_count() and rec["threads"] == torch.get_num_threads() and rec["gpu"] is None
    assert speed.describe([rec]) == f"{rec['conv_gflops']:.1f}"
    assert speed.describe([{"conv_gflops": 27.3}, {"conv_gflops": 9.1}]) == "9.1-27.3"  # resumed elsewhere
    assert speed.describe([{"conv_gflops": 27.0}, {"conv_gflops": 28.0}]) == "27.0"  # within 10%: one machine
    assert speed.describe(None) == speed.describe([]) == "-"  # runs from before the reference


def test_hardware_row_names_cores_cpu_threads_and_gpu(monkeypatch):
    """The card's default hardware row (release without --hardware) says what a reader needs to compare runs."""
    monkeypatch.setattr(speed, "cpu_name", lambda: "Test CPU 9000")
    monkeypatch.setattr(speed.os, "cpu_count", lambda: 6)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert speed.hardware_text(2) == "CPU only: 6 cores (Test CPU 9000), 2 torch threads, no GPU"
    assert speed.hardware_text(1) == "CPU only: 6 cores (Test CPU 9000), 1 torch thread, no GPU"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Test GPU")
    assert speed.hardware_text(4) == "GPU (Test GPU); 6 cores (Test CPU 9000), 4 torch threads"


def test_the_cards_hardware_row_follows_the_runs_machines():
    """A run resumed on other hardware: its card names each in order, with the step it took over."""
    xeon = {"cpu": "Xeon", "cores": 2, "threads": 2, "gpu": None}
    runs = [
        {**xeon, "step": 0, "conv_gflops": 108.9},
        {**xeon, "step": 2031, "conv_gflops": 70.5},  # resumed on the same kind of CPU, a busier moment: one entry
        {"cpu": "EPYC", "cores": 2, "threads": 2, "gpu": None, "step": 5000, "conv_gflops": 27.3},
        {**xeon, "step": 9000, "conv_gflops": 108.0},  # back on a Xeon: a new entry, order kept
    ]
    assert speed.training_hardware(runs) == (
        "CPU only, no GPU; this run trained on "
        "Xeon (2 cores), 2 torch threads, reference 70.5-108.9 GFLOP/s per thread, 2 processes from step 0; then "
        "EPYC (2 cores), 2 torch threads, reference 27.3 GFLOP/s per thread, 1 process from step 5,000; then "
        "Xeon (2 cores), 2 torch threads, reference 108.0 GFLOP/s per thread, 1 process from step 9,000"
    )
    # records from before cores, threads and GPU were kept: the clock's threads fill in, and they merge with new ones
    old = {"step": 0, "cpu": "Xeon", "conv_gflops": 50.0}
    assert speed.training_hardware([old], threads=1) == (
        "CPU only, no GPU; this run trained on Xeon, 1 torch thread, reference 50.0 GFLOP/s per thread, "
        "1 process from step 0"
    )
    resumed = speed.training_hardware([old, {**xeon, "step": 9, "conv_gflops": 51.0}])
    assert "on Xeon (2 cores), 2 torch threads" in resumed and "2 processes from step 0" in resumed
    assert "then" not in resumed
    # another thread count is another entry
    assert "; then " in speed.training_hardware([runs[0], {**xeon, "threads": 1, "step": 5, "conv_gflops": 50.0}])
    gpu = speed.training_hardware([{**xeon, "gpu": "Test GPU", "step": 0, "conv_gflops": 50.0}])
    assert gpu.startswith("this run trained on GPU Test GPU, Xeon (2 cores)") and "CPU only" not in gpu
    assert speed.training_hardware([]) is None and speed.training_hardware(None) is None
    assert speed.gpu_name("cpu") is None
