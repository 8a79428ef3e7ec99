"""Shared pieces of the benchmarks: device, timing, memory, the harness config."""
from __future__ import annotations

import platform
import resource
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def device_of(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda``, resolved as the harness's ``device=`` key is."""
    from discograd.experiment.build import pick_device
    return pick_device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, device: torch.device, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` calls of fn, after ``warmup`` calls (device synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def median(xs) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on a GPU, else peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # Linux: KiB


def machine(device: torch.device) -> str:
    """File name of the results: ``cpu-<threads>threads`` or ``cuda-<gpu name>``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        for junk in ("nvidia", "geforce", "tesla"):
            name = name.replace(junk, "")
        return "cuda-" + "-".join(name.split())
    return f"cpu-{torch.get_num_threads()}threads"


def describe(device: torch.device) -> str:
    what = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    from importlib.metadata import PackageNotFoundError, version
    libs = []
    for name in ("hydra-core", "omegaconf", "numpy"):
        try:
            libs.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return (f"{device.type} ({what}); torch {torch.__version__}; python {platform.python_version()}; "
            f"{'; '.join(libs)}; {platform.system()} {platform.release()}")


def compose(overrides: list[str]):
    """The run config that ``python run.py OVERRIDES`` would use (Hydra's compose API)."""
    from discograd.experiment.config import compose_config
    return compose_config(overrides)
