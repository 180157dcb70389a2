"""Benchmarks (not tests): training-step time and peak memory per configuration, and inference latency
and throughput, on CPU and (when present) CUDA. `python -m cvaegan.bench [--write-readme]`."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from .config import ModelConfig, TrainConfig, default_widths
from .models import CVAEGAN
from .service import AUTO


def _timeit(fn, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


STEP_VARIANTS = ("eager", "channels_last", "compile", "channels_last+compile")


def train_step_once(
    resolution: int, batch: int, device: str, steps: int = 4, variant: str = "eager", preset: str = "none"
) -> dict:
    """Time `steps` training iterations of the default config (264 classes) on random data.

    variant (CPU): "eager"; "channels_last" (networks and inputs in channels_last memory format);
    "compile" (torch.compile of every network's forward, inductor; compile time is excluded by warm-up);
    "channels_last+compile" (both)."""
    from .seeds import step_generator
    from .train import Trainer

    dev = torch.device(device)
    cfg = ModelConfig.for_resolution(resolution, 264)
    model = CVAEGAN(cfg).to(dev)
    if variant not in STEP_VARIANTS:
        raise ValueError(f"variant must be one of {STEP_VARIANTS}, got {variant!r}")
    layout = "channels_last" if variant.startswith("channels_last") or dev.type == "cuda" else "contiguous"
    tr = Trainer(model, TrainConfig.from_preset(preset, batch_size=batch, device=device, memory_format=layout), dev)
    x = torch.rand(batch, 3, resolution, resolution, device=dev) * 2 - 1
    c = torch.randint(0, 264, (batch,), device=dev)
    if tr.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if variant.endswith("compile"):
        for net in tr.nets.values():
            net.forward = torch.compile(net.forward)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        g = step_generator(0, tr.step)
        noise = {
            "eps": torch.randn(batch, cfg.z_dim, generator=g).to(dev),
            "z_p": torch.randn(batch, cfg.z_dim, generator=g).to(dev),
            "c_p": torch.randint(0, 264, (batch,), generator=g).to(dev),
        }
        tr.train_step(x, c, g, noise)

    times = _timeit(step, steps, warmup=3)  # the same warm-up for every variant (compile's happens in its first calls)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:  # counted once, on one extra step
        step()
    flops = fc.get_total_flops()
    step_s = statistics.median(times)
    out = {
        "resolution": resolution,
        "batch": batch,
        "device": device,
        "variant": variant,
        "preset": preset,
        "step_s": step_s,
        "peak_mib": round(peak),
        "gflop_per_step": round(flops / 1e9, 1),
        "achieved_tflops": round(flops / step_s / 1e12, 4),
    }
    if dev.type == "cuda":
        peak_tflops = bf16_peak_tflops(torch.cuda.get_device_name(dev))
        out["bf16_peak_fraction"] = round(out["achieved_tflops"] / peak_tflops, 4) if peak_tflops else None
    return out


# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s, without sparsity).
BF16_PEAK_TFLOPS = {
    "H100 SXM": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200": 989.4,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "L4": 121.0,
}


def bf16_peak_tflops(device_name: str) -> float | None:
    """The data-sheet dense bf16 peak for a CUDA device name, or None when unknown."""
    name = device_name.upper()
    if "H100" in name:
        return BF16_PEAK_TFLOPS["H100 PCIe" if "PCIE" in name else "H100 NVL" if "NVL" in name else "H100 SXM"]
    for key, value in BF16_PEAK_TFLOPS.items():
        if key.upper() in name:
            return value
    return None


def inference_latency(resolution: int, device: str, repeats: int = 20) -> dict:
    """Median latency of sample (1 image), throughput of batched sampling, and inpaint / reconstruct."""
    from PIL import Image

    from . import inference as I

    cfg = ModelConfig.for_resolution(resolution, 264)
    model = CVAEGAN(cfg, with_discriminator=False).to(device).eval()
    one = _timeit(lambda: I.sample(model, 0, [0]), repeats)
    seeds = list(range(32))
    batched = _timeit(lambda: I.sample(model, 0, seeds, batch_size=32), max(3, repeats // 5))
    photo = Image.new("RGB", (resolution, resolution), (120, 100, 90))
    mask = torch.zeros(resolution, resolution)
    mask[resolution // 4 : 3 * resolution // 4, resolution // 4 : 3 * resolution // 4] = 1
    inp = _timeit(lambda: I.inpaint(model, photo, mask.numpy()), max(3, repeats // 2))
    rec = _timeit(lambda: I.reconstruct(model, photo), max(3, repeats // 2))
    a, b = I.endpoint(model, 0, 1), I.endpoint(model, 5, 2)
    morph = _timeit(lambda: I.interpolate(model, a, b, frames=8), max(3, repeats // 5))
    small = photo.resize((resolution // 4, resolution // 4))
    sr = _timeit(lambda: I.superresolve(model, small, steps=100), 2, warmup=1)
    return {
        "resolution": resolution,
        "device": device,
        "sample_ms": 1000 * statistics.median(one),
        "batched_img_per_s": 32 / statistics.median(batched),
        "inpaint_ms": 1000 * statistics.median(inp),
        "reconstruct_ms": 1000 * statistics.median(rec),
        "interpolate8_ms": 1000 * statistics.median(morph),
        "superres100_ms": 1000 * statistics.median(sr),
    }


def _pct_ms(seconds: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of a list of durations, in milliseconds; None when empty."""
    if not seconds:
        return None
    v = sorted(seconds)
    return 1000 * v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def _launch_demo(weights: str | None = None):
    """app.py's demo on 127.0.0.1 (built on import; rebuilt when it was imported with other weights)."""
    import importlib

    if weights:
        os.environ["CVAEGAN_WEIGHTS"] = weights
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    app = importlib.reload(sys.modules["app"]) if "app" in sys.modules else importlib.import_module("app")
    app.demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, max_file_size="10mb")
    return app


def app_round_trip(requests: int = 30) -> dict:
    """p50 / p95 latency through gradio_client against app.py on 127.0.0.1 (bundled weights):
    one generated image, and one inpaint of a 64-px square hole with the default 4 iterations."""
    import tempfile

    import numpy as np
    from gradio_client import Client, handle_file
    from PIL import Image

    app = _launch_demo()
    try:
        client = Client(app.demo.local_url, verbose=False)
        choice = app.registry.default
        model = app.registry.get(choice).model
        cls = model.config.class_names[0]
        r = model.config.resolution
        tmp = Path(tempfile.mkdtemp())
        Image.fromarray((np.random.default_rng(0).random((r, r, 3)) * 255).astype("uint8")).save(tmp / "bg.png")
        layer = np.zeros((r, r, 4), np.uint8)
        layer[r // 4 : 3 * r // 4, r // 4 : 3 * r // 4] = 255
        Image.fromarray(layer, "RGBA").save(tmp / "mask.png")
        editor = {
            "background": handle_file(str(tmp / "bg.png")),
            "layers": [handle_file(str(tmp / "mask.png"))],
            "composite": None,
            "id": None,
        }
        gen = _timeit(lambda: client.predict(choice, cls, 1, False, 1, 1.0, api_name="/generate"), requests)
        inp = _timeit(lambda: client.predict(choice, editor, AUTO, 4, 0, api_name="/inpaint"), requests)
    finally:
        app.demo.close()

    return {
        "model": choice,
        "requests": requests,
        "generate_p50_ms": _pct_ms(gen, 0.5),
        "generate_p95_ms": _pct_ms(gen, 0.95),
        "inpaint_p50_ms": _pct_ms(inp, 0.5),
        "inpaint_p95_ms": _pct_ms(inp, 0.95),
    }


def _rss_mib() -> float:
    """Current resident memory of this process (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def load_test(clients: int = 16, requests_per_client: int = 8, weights: str | None = None, seed: int = 0) -> dict:
    """`clients` gradio_client clients in parallel threads against app.py on 127.0.0.1, each sending
    `requests_per_client` requests, alternately generate (1 image, random class and seed) and inpaint
    (random brush-free box hole, 4 iterations). Returns errors, latency percentiles and the server
    process's resident memory (start after warm-up, peak, end)."""
    import random
    import tempfile
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from gradio_client import Client, handle_file
    from PIL import Image

    app = _launch_demo(weights)
    try:
        choice = weights or app.registry.default
        model = app.registry.get(choice).model
        names, r = model.config.class_names, model.config.resolution
        tmp = Path(tempfile.mkdtemp())
        rng = np.random.default_rng(seed)
        for i in range(4):
            Image.fromarray((rng.random((r, r, 3)) * 255).astype("uint8")).save(tmp / f"bg{i}.png")
            layer = np.zeros((r, r, 4), np.uint8)
            a, b = sorted(rng.integers(0, r, 2))
            layer[a : b + 4, a : b + 4] = 255
            Image.fromarray(layer, "RGBA").save(tmp / f"mask{i}.png")
        url = app.demo.local_url
        warm = Client(url, verbose=False)
        warm.predict(choice, names[0], 1, False, 1, 1.0, api_name="/generate")
        rss = {"start": _rss_mib(), "peak": _rss_mib()}
        stop = threading.Event()

        def watch():
            while not stop.wait(0.05):
                rss["peak"] = max(rss["peak"], _rss_mib())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()

        def client_run(k: int) -> list[tuple[str, float, str | None]]:
            rnd = random.Random(seed * 1000 + k)
            c = Client(url, verbose=False)
            out = []
            for j in range(requests_per_client):
                t = time.perf_counter()
                kind = "generate" if (j + k) % 2 == 0 else "inpaint"
                try:
                    if kind == "generate":
                        c.predict(choice, rnd.choice(names), rnd.randrange(10**6), False, 1, 1.0, api_name="/generate")
                    else:
                        i = rnd.randrange(4)
                        editor = {
                            "background": handle_file(str(tmp / f"bg{i}.png")),
                            "layers": [handle_file(str(tmp / f"mask{i}.png"))],
                            "composite": None,
                            "id": None,
                        }
                        c.predict(choice, editor, AUTO, 4, 0, api_name="/inpaint")
                    err = None
                except Exception as e:  # counted and reported, never raised
                    err = f"{type(e).__name__}: {e}"[:200]
                out.append((kind, time.perf_counter() - t, err))
            return out

        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = [x for part in pool.map(client_run, range(clients)) for x in part]
        wall = time.perf_counter() - t0
        stop.set()
        watcher.join()
        rss["end"] = _rss_mib()
    finally:
        app.demo.close()

    def pct(v, q):
        ms = _pct_ms(v, q)
        return None if ms is None else round(ms)

    lat = {k: [t for kind, t, e in results if kind == k and e is None] for k in ("generate", "inpaint")}
    errors = [e for _, _, e in results if e]
    return {
        "model": choice,
        "clients": clients,
        "requests": len(results),
        "errors": len(errors),
        "error_examples": errors[:3],
        "wall_s": round(wall, 1),
        "throughput_req_per_s": round(len(results) / wall, 2),
        "generate_p50_ms": pct(lat["generate"], 0.5),
        "generate_p95_ms": pct(lat["generate"], 0.95),
        "inpaint_p50_ms": pct(lat["inpaint"], 0.5),
        "inpaint_p95_ms": pct(lat["inpaint"], 0.95),
        "rss_start_mib": round(rss["start"]),
        "rss_peak_mib": round(rss["peak"]),
        "rss_end_mib": round(rss["end"]),
    }


def _in_subprocess(kind: str, *args) -> dict:
    """Run one measurement in a fresh process so peak memory belongs to it alone."""
    code = (
        f"import json, torch; from cvaegan import bench; torch.set_num_threads({torch.get_num_threads()}); "
        f"print(json.dumps(bench.{kind}(*{list(args)!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def step_variants(resolution: int = 64, batch: int = 32, steps: int = 10, preset: str = "v2", rounds: int = 2) -> str:
    """Seconds per CPU training step: eager vs channels_last vs torch.compile vs both, each in a fresh process,
    interleaved over `rounds` rounds (so a slow spell of a shared machine does not hit one variant only);
    each variant's best median over the rounds is reported."""
    variants = STEP_VARIANTS
    best: dict[str, float] = {}
    failed: dict[str, str] = {}
    for _ in range(rounds):
        for variant in variants:
            if variant in failed:
                continue
            try:
                r = _in_subprocess("train_step_once", resolution, batch, "cpu", steps, variant, preset)
            except subprocess.CalledProcessError as e:
                failed[variant] = " ".join((e.stderr or "").strip().splitlines()[-1:])
                continue
            best[variant] = min(best.get(variant, float("inf")), r["step_s"])
    lines = [
        f"| {resolution} px, batch {batch}, preset {preset}, CPU, {torch.get_num_threads()} threads "
        f"({rounds} interleaved rounds x {steps} steps, best median) | seconds / step | vs eager |",
        "|---|---|---|",
    ]
    base = best.get("eager")
    for variant in variants:
        if variant in failed:
            lines.append(f"| {variant} | failed: {failed[variant]} | - |")
        else:
            ratio = f"{base / best[variant]:.2f}x" if base else "-"
            lines.append(f"| {variant} | {best[variant]:.2f} | {ratio} |")
    return "\n".join(lines)


def run(write_readme: bool = False, quick: bool = False, app: bool = True) -> str:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    train_cfgs = [(32, 32), (64, 32), (64, 64), (128, 16)] if not quick else [(32, 8)]
    widths = ", ".join(f"base {default_widths(r)['base_channels']} at {r} px" for r in (32, 64, 128))
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with `python -m cvaegan.bench` on {platform.machine()} "
        f"({os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads); default "
        f"widths per resolution ({widths}), 264 classes, random weights (speed does not depend on training).",
        "",
        "| training step | device | seconds / step | peak memory (MiB) | GFLOP / step | achieved TFLOP/s "
        "| fraction of bf16 peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for dev in devices:
        for res, b in train_cfgs:
            r = _in_subprocess("train_step_once", res, b, dev)
            mem = "process RSS" if dev == "cpu" else "CUDA allocated"
            frac = r.get("bf16_peak_fraction")
            lines.append(
                f"| {res} px, batch {b} | {dev} | {r['step_s']:.2f} | {r['peak_mib']} ({mem}) | "
                f"{r['gflop_per_step']:.0f} | {r['achieved_tflops']:.3f} | "
                f"{'-' if dev == 'cpu' else (f'{100 * frac:.1f}%' if frac else 'unknown device')} |"
            )
    lines += [
        "",
        "| inference | device | sample, 1 image (ms) | batched sampling (img/s) | inpaint, 4 iterations (ms) "
        "| reconstruct (ms) | interpolate, 8 frames (ms) | super-resolve, 100 steps (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dev in devices:
        for res in (64, 128) if not quick else (32,):
            r = _in_subprocess("inference_latency", res, dev, 5 if quick else 20)
            lines.append(
                f"| {res} px | {dev} | {r['sample_ms']:.1f} | {r['batched_img_per_s']:.0f} | "
                f"{r['inpaint_ms']:.0f} | {r['reconstruct_ms']:.1f} | {r['interpolate8_ms']:.0f} | "
                f"{r['superres100_ms']:.0f} |"
            )
    if app:
        r = _in_subprocess("app_round_trip", 10 if quick else 30)
        lines += [
            "",
            f"| app round trip via gradio_client ({r['model']}, {r['requests']} sequential requests) | p50 (ms) | p95 (ms) |",
            "|---|---|---|",
            f"| generate 1 image | {r['generate_p50_ms']:.0f} | {r['generate_p95_ms']:.0f} |",
            f"| inpaint (4 iterations) | {r['inpaint_p50_ms']:.0f} | {r['inpaint_p95_ms']:.0f} |",
        ]
    table = "\n".join(lines)
    if write_readme:
        write_readme_table(table)
    return table


def write_readme_table(table: str, readme: Path | None = None) -> None:
    """Put `table` between README.md's bench markers (the project's README by default), as every experiment's
    `--write-readme` does."""
    from .experiments import write_readme_section

    write_readme_section(readme or Path(__file__).resolve().parent.parent / "README.md", "bench", table + "\n")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--write-readme", action="store_true", help="replace the table between the bench markers in README.md"
    )
    ap.add_argument("--quick", action="store_true", help="one small configuration (to check the script works)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--no-app", action="store_true", help="skip the app round-trip measurement")
    ap.add_argument("--load", action="store_true", help="only the load test: 16 concurrent gradio_client clients")
    ap.add_argument(
        "--step-variants",
        action="store_true",
        help="only eager vs channels_last vs torch.compile vs both for the CPU training step (64 px, batch 32)",
    )
    ap.add_argument("--clients", type=int, default=16, help="load test: concurrent clients (default 16)")
    ap.add_argument("--requests", type=int, default=8, help="load test: requests per client (default 8)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.load:
        print(json.dumps(load_test(a.clients, a.requests), indent=1))
    elif a.step_variants:
        print(step_variants())
    else:
        print(run(a.write_readme, a.quick, app=not a.no_app))
