"""The benchmark script's measurements work (timings themselves are never asserted: machines are noisy)."""
from cvaegan import bench


def test_train_step_measurement_counts_flops():
    r = bench.train_step_once(32, 4, "cpu", steps=1)
    assert r["step_s"] > 0 and r["gflop_per_step"] > 0.1 and r["achieved_tflops"] > 0
    assert "bf16_peak_fraction" not in r  # only on CUDA


def test_bf16_peaks_from_device_names():
    assert bench.bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bench.bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench.bf16_peak_tflops("Some Future GPU") is None
