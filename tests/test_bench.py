"""The benchmark script's measurements work (timings themselves are never asserted: machines are noisy)."""

import pytest

from cvaegan import bench


@pytest.mark.slow  # one training step of the full-size default model, plus FLOP counting
def test_train_step_measurement_counts_flops():
    r = bench.train_step_once(32, 4, "cpu", steps=1)
    assert r["step_s"] > 0 and r["gflop_per_step"] > 0.1 and r["achieved_tflops"] > 0
    assert "bf16_peak_fraction" not in r  # only on CUDA
    with pytest.raises(ValueError, match="variant must be one of"):
        bench.train_step_once(32, 4, "cpu", steps=1, variant="channel_last")


def test_step_variants_interleave_rounds_and_keep_each_variants_best(monkeypatch):
    import subprocess

    from cvaegan import bench

    calls = []
    times = {"eager": [0.9, 0.8], "channels_last": [0.5, 0.6], "channels_last+compile": [0.45, 0.4]}

    def fake(fn, res, batch, device, steps, variant, preset):
        calls.append(variant)
        if variant == "compile":
            raise subprocess.CalledProcessError(1, "x", stderr="Traceback\nRuntimeError: no compiler")
        return {"step_s": times[variant][sum(c == variant for c in calls) - 1]}

    monkeypatch.setattr(bench, "_in_subprocess", fake)
    table = bench.step_variants(rounds=2, steps=3)
    assert calls == [
        "eager",
        "channels_last",
        "compile",
        "channels_last+compile",
        "eager",
        "channels_last",
        "channels_last+compile",
    ]  # interleaved; a failure is not retried
    assert "| eager | 0.80 | 1.00x |" in table and "| channels_last | 0.50 | 1.60x |" in table
    assert "| channels_last+compile | 0.40 | 2.00x |" in table
    assert "| compile | failed: RuntimeError: no compiler | - |" in table


def test_write_readme_table_replaces_only_the_bench_block(tmp_path):
    from cvaegan.bench import write_readme_table

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold table\n<!-- bench:end -->\nafter\n")
    write_readme_table("| new | table |", readme)
    assert readme.read_text() == "intro\n<!-- bench:start -->\n| new | table |\n<!-- bench:end -->\nafter\n"
