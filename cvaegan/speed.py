"""A speed reference of the machine a run trains on.

CPU-minutes measure a budget, but the same CPU-minute buys about 3x more training steps on one shared 2-core
machine than on another (README, Equal-budget recipes). So every training process measures a fixed workload
before its first step, shaped like the model's own work (a 3x3 convolution, forward and backward, on one
thread: what one CPU-second buys, the clock's unit), and records it with the run's clock. Rows measured on
machines whose reference differs are then seen to differ in what a CPU-minute was worth."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# the workload: one 3x3 convolution, 32 -> 32 channels, on a batch of 16 32x32 maps, forward and backward
_BATCH, _CH, _SIDE = 16, 32, 32
CONV_GFLOP = 3 * 2 * _BATCH * _CH * _CH * 9 * _SIDE * _SIDE / 1e9  # forward + grads of input and weight


# channels_last on CPU: set from README Benchmarks ("Training step variants", `bench --step-variants`)
CPU_CHANNELS_LAST = True  # 1.47x faster than contiguous for the v2 step at 64 px, batch 32, 2 threads (2026-11-24)


def use_channels_last(memory_format: str, device: torch.device) -> bool:
    """Whether the networks and batches use the channels_last memory format (the values do not change beyond
    float rounding). Training uses it (TrainConfig.memory_format), and so does enrolment ("auto")."""
    if memory_format == "auto":
        return device.type == "cuda" or (device.type == "cpu" and CPU_CHANNELS_LAST)
    return memory_format == "channels_last"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _threads(n: int) -> str:
    return f"{n} torch thread{'s' if n != 1 else ''}"


def hardware_text(threads: int | None = None) -> str:
    """This machine as a model card's hardware row: "CPU only: 2 cores (AMD EPYC ...), 2 torch threads, no GPU",
    or the GPU's name when torch sees one."""
    threads = threads or torch.get_num_threads()
    cpu = f"{os.cpu_count() or '?'} cores ({cpu_name()}), {_threads(threads)}"
    if torch.cuda.is_available():
        return f"GPU ({torch.cuda.get_device_name(0)}); {cpu}"
    return f"CPU only: {cpu}, no GPU"


def reference_gflops(repeats: int = 7) -> float:
    """GFLOP per second of the reference convolution on one CPU thread: its fastest of `repeats` timed runs
    after one warm-up (about 0.15 s in all; other load only slows a run down, so the fastest is the machine's
    figure). torch's thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _time_conv(repeats)
    finally:
        torch.set_num_threads(threads)


def _time_conv(repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(_BATCH, _CH, _SIDE, _SIDE, generator=gen, requires_grad=True)
    w = torch.randn(_CH, _CH, 3, 3, generator=gen, requires_grad=True)
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        F.conv2d(x, w, padding=1).sum().backward()
        if i:  # the first run is the warm-up
            times.append(time.perf_counter() - t)
    return round(CONV_GFLOP / min(times), 2)


def gpu_name(device) -> str | None:
    """The name of the GPU a torch device is on, None for the CPU."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def machine_record(step: int, gpu: str | None = None) -> dict:
    """What the run's clock keeps about the machine a training process started on, at `step`: the CPU's name, its
    core count, torch's threads, the reference's GFLOP/s and the GPU the process trained on (None: the CPU)."""
    return {
        "step": int(step),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": gpu,
        "conv_gflops": reference_gflops(),
    }


def _same_hardware(a: dict, b: dict) -> bool:
    keys = ("cpu", "cores", "threads", "gpu")  # records from before cores, threads and GPU were kept lack them
    return all(a[k] == b[k] for k in keys if k in a and k in b)


def training_hardware(machines: list[dict] | None, threads: int | None = None) -> str | None:
    """A model card's hardware row from a run's clock (the machine_record of each training process): the hardware in
    the order it trained, consecutive processes on the same CPU, cores, threads and GPU counted together with the
    range of their reference speeds (one host's reference varies with its neighbours' load, so the speed does not
    tell machines apart) and the step the first of them started at. threads: the clock's, for records from before
    they kept their own. None when the run recorded no machine."""
    groups: list[list[dict]] = []
    for m in machines or []:
        if groups and _same_hardware(groups[-1][-1], m):
            groups[-1].append(m)
        else:
            groups.append([m])
    if not groups:
        return None

    def one(group: list[dict]) -> str:
        m = {k: v for rec in group for k, v in rec.items()}  # the newest record knows the most about the machine
        n = m.get("threads") or threads
        parts = [m.get("cpu") or "unknown CPU"]
        if m.get("cores"):
            parts[0] += f" ({m['cores']} cores)"
        if m.get("gpu"):
            parts.insert(0, f"GPU {m['gpu']}")
        if n:
            parts.append(_threads(n))
        parts.append(f"reference {describe(group)} GFLOP/s per thread")
        runs = f"{len(group)} processes" if len(group) > 1 else "1 process"
        parts.append(f"{runs} from step {group[0].get('step', 0):,}")
        return ", ".join(parts)

    gpu = any(m.get("gpu") for g in groups for m in g)
    return f"{'' if gpu else 'CPU only, no GPU; '}this run trained on " + "; then ".join(one(g) for g in groups)


def describe(machines: list[dict] | None) -> str:
    """'27.3' for a run trained on one machine, '9.1-27.3' for one resumed across machines, '-' if unknown."""
    vals = sorted(m["conv_gflops"] for m in machines or [] if "conv_gflops" in m)
    if not vals:
        return "-"
    lo, hi = vals[0], vals[-1]
    return f"{lo:.1f}" if hi <= lo * 1.1 else f"{lo:.1f}-{hi:.1f}"
