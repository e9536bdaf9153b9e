"""Measured latency of timm models: real forward passes, median and spread, cached on disk.

``get_latency`` keys a measurement by tag, input size, batch size and the device's name, in the cost
cache of :mod:`saver_search.zoo.costs`; ``source_latency`` gives a search the latency of each model of a
prediction source.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from saver_search._validation import check_img_size, check_number
from saver_search.compat import import_torch
from saver_search.errors import InvalidParameter, SaverSearchError
from saver_search.zoo.costs import cost_key, get_cost, read_cache, update_cache, warn_malformed
from saver_search.zoo.flops import build_model
from saver_search.zoo.names import resolve_timm_name

UNSTEADY = 0.25  # a latency whose repeats spread more than this (p90 - p10, relative to the median) is noisy


@dataclass(frozen=True)
class Latency:
    """Measured seconds per image (median over repeats) and the repeats' spread: ``(p90 - p10) / median``.
    A spread above :data:`UNSTEADY` means the machine was busy and the figure is unreliable."""

    seconds: float
    spread: float

    @property
    def unsteady(self) -> bool:
        return self.spread > UNSTEADY


def measure_latency(
    name: str,
    img_size: int | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    warmup: int = 3,
    repeats: int = 10,
) -> Latency:
    """Seconds per image over ``repeats`` real forward passes of a randomly initialised model (median, spread)."""
    check_img_size(img_size)
    check_number(batch_size, "batch_size", low=1, integer=True)
    check_number(repeats, "repeats", low=1, integer=True)
    torch = import_torch()
    target = _torch_device(device)
    _, model, (height, width) = build_model(name, img_size, target)
    images = torch.randn(batch_size, 3, height, width, device=target)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(images)
        for _ in range(repeats):
            _synchronize(target)
            start = time.perf_counter()
            model(images)
            _synchronize(target)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    deciles = statistics.quantiles(times, n=10) if len(times) > 1 else [median] * 9
    return Latency(seconds=median / batch_size, spread=(deciles[-1] - deciles[0]) / median)


def get_latency(
    name: str,
    img_size: int | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    repeats: int = 10,
    refresh: bool = False,
) -> Latency:
    """Seconds per image from the cache, keyed by (tag, input size, batch size, device name); measured and stored if
    absent or ``refresh``. Without ``img_size`` the model's default input size is used, and keyed, so a latency
    measured by ``costs --measure`` serves a search that names the size, and the other way round."""
    check_img_size(img_size)
    tag = resolve_timm_name(name)
    img_size = img_size or get_cost(tag).img_size
    key = f"{cost_key(tag, img_size)}|bs{batch_size}|{device_name(device)}"
    cached = None if refresh else read_cache()["latency"].get(key)
    if cached is not None:
        try:
            return Latency(**cached) if isinstance(cached, dict) else Latency(float(cached), 0.0)
        except (TypeError, ValueError):
            warn_malformed(key)
    latency = measure_latency(tag, img_size, batch_size, device, repeats=repeats)
    update_cache("latency", key, asdict(latency))
    return latency


def source_latency(source: Any, batch_size: int = 1, device: str = "cpu",
                   on_unsteady: Callable[[str, Latency], None] | None = None) -> Callable[[str], float]:
    """Milliseconds per image of a prediction source's model at the input size the source records, measured once
    per model (and cached on disk). ``on_unsteady(name, latency)`` hears of measurements taken on a busy machine."""
    if batch_size < 1:
        raise InvalidParameter("latency_batch_size", f"must be a positive integer, got {batch_size}")
    measured: dict[str, float] = {}

    def latency_ms(name: str) -> float:
        if name not in measured:
            latency = get_latency(name, source.model(name).meta.img_size, batch_size=batch_size, device=device)
            if latency.unsteady and on_unsteady is not None:
                on_unsteady(name, latency)
            measured[name] = 1000.0 * latency.seconds
        return measured[name]

    return latency_ms


def unsteady_warning(name: str, latency: Latency) -> str:
    """One line on a latency measured under load."""
    return (f"warning: the latency of {name} varied by {latency.spread:.0%} of its median across repeats (p10 to p90): "
            "the machine looks busy, so latencies may be off; measure on an idle machine with more repeats")


def device_name(device: str) -> str:
    """Name of the hardware behind ``device``: the GPU model, or the CPU model and thread count."""
    torch = import_torch()
    target = _torch_device(device)
    if target.type == "cuda":
        return torch.cuda.get_device_name(target)
    return f"{_cpu_model()} (CPU, {torch.get_num_threads()} threads)"


def _torch_device(device: str) -> Any:
    torch = import_torch()
    try:
        target = torch.device(device)
    except RuntimeError as err:
        raise SaverSearchError(f"unknown device {device!r}; use cpu or cuda") from err
    if target.type == "cuda" and not torch.cuda.is_available():
        raise SaverSearchError("CUDA is not available on this machine; use <device=cpu>")
    if target.type not in ("cpu", "cuda"):
        raise SaverSearchError(f"unsupported device {device!r}; use cpu or cuda")
    return target


def _synchronize(target: Any) -> None:
    if target.type == "cuda":
        import_torch().cuda.synchronize(target)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"
