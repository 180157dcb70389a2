"""The benchmark script's measurements work (timings themselves are never asserted: machines are noisy)."""

import pytest

from cvaegan import bench


@pytest.mark.slow  # one training step of the full-size default model, plus FLOP counting
def test_train_step_measurement_counts_flops():
    r = bench.train_step_once(32, 4, "cpu", steps=1)
    assert r["step_s"] > 0 and r["gflop_per_step"] > 0.1 and r["achieved_tflops"] > 0
    assert "bf16_peak_fraction" not in r  # only on CUDA
