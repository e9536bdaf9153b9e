"""Compute cost (GMACs, GFLOPs, parameters) and measured latency of timm models at their real resolution.

Lookups go shipped table -> on-disk cache -> live count. A table hit for a full pretrained tag
imports neither torch nor timm, so a search over the zoo stays fast and never builds a model.

A live count builds the model on the ``meta`` device (no memory, no weights), re-parameterizes it
for inference (RepVGG/MobileOne branches and conv+BN pairs fused, as deployed and as timm benchmarks
it) and runs ``FlopCounterMode`` over one forward pass. The convention is timm's published one
(fvcore): multiply-accumulates of convolutions, matmuls and attention, plus normalisation layers
(batch norm 2 per element, 1 without affine, 5/4 in training mode as in weight standardisation;
layer/group norm 5 per element, 4 without affine) and resizes (nearest 1, bilinear 4 per output
element). Norms matter for tiny models (3.4% of efficientnet_b0, 7% of mobilenetv3_small_050) and
hardly for large ones (0.5% of resnet50, 0.1% of vit_base_patch16_224); without them 9% of timm's
published figures would be more than 2% off.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from saver_search.errors import InvalidParameter, SaverSearchError, UnknownModel
from saver_search.naming import close_names, split_name
from saver_search.files import atomic_write_text

TABLE_PATH = Path(__file__).parent / "data" / "costs.csv"
TABLE_COLUMNS = ("name", "img_size", "gmacs", "gflops", "params_m")
CACHE_VERSION = 1
LIST_HINT = "(list: python -m saver_search costs --list PATTERN)"


@dataclass(frozen=True)
class ModelCost:
    """Inference cost of one image through a model.

    ``img_size`` is the square input side (the height, for the few models whose default input is
    not square); ``source`` says where the figure came from: "table", "counted" or "cache".
    """

    name: str
    img_size: int
    gmacs: float
    gflops: float
    params_m: float
    source: str


# ----------------------------------------------------------------------------- public API


def get_cost(name: str, img_size: int | None = None) -> ModelCost:
    """Cost of ``name`` at ``img_size`` (default: the pretrained cfg's input size): table, then cache, then count."""
    _check_img_size(img_size)
    hit = table_cost(name, img_size)
    if hit is not None:
        return hit
    tag = resolve_name(name)
    hit = table_cost(tag, img_size)
    if hit is not None:
        return hit
    key = _cost_key(tag, img_size)
    entry = _read_cache()["costs"].get(key)
    if entry is not None:
        try:
            return ModelCost(**entry, source="cache")
        except TypeError:
            _warn_malformed(key)
    cost = count_cost(tag, img_size)
    _update_cache("costs", key, _stored_fields(cost))
    return cost


def count_cost(name: str, img_size: int | None = None) -> ModelCost:
    """Count the cost of ``name`` live: build on the meta device and run FlopCounterMode over one forward."""
    tag, height, flops_by_op, params = _count(name, img_size)
    flops = sum(flops_by_op.values())
    return ModelCost(
        name=tag,
        img_size=height,
        gmacs=round(flops / 2 / 1e9, 4),
        gflops=round(flops / 1e9, 4),
        params_m=round(params / 1e6, 4),
        source="counted",
    )


def count_flops_by_op(name: str, img_size: int | None = None) -> dict[str, int]:
    """FLOPs of one forward per aten operator (e.g. ``{"aten.convolution": ..., "aten.bmm": ...}``)."""
    return _count(name, img_size)[2]


def build_model(name: str, img_size: int | None = None, device: Any = "meta") -> tuple[str, Any, tuple[int, int]]:
    """(tag, model, (height, width)): ``name`` randomly initialised on ``device``, in eval mode and
    re-parameterized for inference, with the input size it is counted or timed at.

    A non-default ``img_size`` is passed on to models that accept it (fixed position embeddings,
    window sizes); at the default resolution the model is built exactly as ``create_model(tag)``.
    """
    _check_img_size(img_size)
    torch, timm = _import_torch(), _import_timm()
    tag = resolve_name(name)
    cfg = timm.models.get_pretrained_cfg(tag)
    with torch.device(device):
        model = None
        if img_size is not None and (cfg is None or tuple(cfg.input_size[1:]) != (img_size, img_size)):
            try:
                model = timm.create_model(tag, pretrained=False, img_size=img_size)
            except TypeError as err:
                if "img_size" not in str(err):
                    raise
        if model is None:
            model = timm.create_model(tag, pretrained=False)
        model = timm.models.reparameterize_model(model.eval(), inplace=True)
    if img_size is not None:
        return tag, model, (img_size, img_size)
    _, height, width = model.pretrained_cfg["input_size"]
    return tag, model, (int(height), int(width))


def flop_counter() -> Any:
    """A ``FlopCounterMode`` that counts in this module's convention (norms and resizes included)."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping=_extra_formulas())


def resolve_name(name: str) -> str:
    """Full pretrained tag for ``name``: a bare architecture maps to timm's default tag, a full tag to itself."""
    timm = _import_timm()
    arch, tag = split_name(name)
    if not timm.is_model(arch):
        raise UnknownModel(name, _unknown_model_message(timm, name))
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # the architecture exists but has no such tag
        cfg = None
    if tag:
        if cfg is None:
            raise UnknownModel(name, _unknown_model_message(timm, name))
        return name
    return f"{arch}.{cfg.tag}" if cfg is not None and cfg.tag else arch


def list_pretrained(pattern: str) -> list[str]:
    """Pretrained tags matching the fnmatch ``pattern`` (a pattern without wildcards matches as a substring)."""
    import fnmatch

    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    return fnmatch.filter(_import_timm().list_models(pretrained=True), pattern)


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
    _check_img_size(img_size)
    for label, value in (("batch_size", batch_size), ("repeats", repeats)):
        if value < 1:
            raise InvalidParameter(label, f"must be a positive integer, got {value}")
    torch = _import_torch()
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
    _check_img_size(img_size)
    tag = resolve_name(name)
    img_size = img_size or get_cost(tag).img_size
    key = f"{_cost_key(tag, img_size)}|bs{batch_size}|{device_name(device)}"
    cached = None if refresh else _read_cache()["latency"].get(key)
    if cached is not None:
        try:
            return Latency(**cached) if isinstance(cached, dict) else Latency(float(cached), 0.0)
        except (TypeError, ValueError):
            _warn_malformed(key)
    latency = measure_latency(tag, img_size, batch_size, device, repeats=repeats)
    _update_cache("latency", key, asdict(latency))
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
    torch = _import_torch()
    target = _torch_device(device)
    if target.type == "cuda":
        return torch.cuda.get_device_name(target)
    return f"{_cpu_model()} (CPU, {torch.get_num_threads()} threads)"


def cache_path() -> Path:
    """The cost/latency cache file: ``$SAVER_SEARCH_CACHE/costs.json``, default ``~/.cache/saver_search/costs.json``."""
    root = os.environ.get("SAVER_SEARCH_CACHE") or Path.home() / ".cache" / "saver_search"
    return Path(root) / "costs.json"


def table_costs() -> list[ModelCost]:
    """All rows of the shipped table; the first row of each model is at its default resolution."""
    return [cost for rows in _load_table().values() for cost in rows]


# ----------------------------------------------------------------------------- shipped table


@lru_cache(maxsize=1)
def _load_table() -> dict[str, list[ModelCost]]:
    """Rows of ``data/costs.csv`` by model tag, in file order (default resolution first)."""
    if not TABLE_PATH.exists():
        return {}
    table: dict[str, list[ModelCost]] = {}
    with TABLE_PATH.open(newline="") as handle:
        for row in csv.DictReader(handle):
            cost = ModelCost(
                name=row["name"],
                img_size=int(row["img_size"]),
                gmacs=float(row["gmacs"]),
                gflops=float(row["gflops"]),
                params_m=float(row["params_m"]),
                source="table",
            )
            table.setdefault(cost.name, []).append(cost)
    return table


def table_cost(name: str, img_size: int | None) -> ModelCost | None:
    """The shipped table's row for a full tag at ``img_size`` (default: its default resolution), if any."""
    rows = _load_table().get(name, [])
    if img_size is None:
        return rows[0] if rows else None
    return next((row for row in rows if row.img_size == img_size), None)


# ----------------------------------------------------------------------------- disk cache


def _cost_key(tag: str, img_size: int | None) -> str:
    return f"{tag}@{img_size or 'default'}"


def _empty_cache() -> dict[str, Any]:
    return {"version": CACHE_VERSION, "costs": {}, "latency": {}}


def _read_cache() -> dict[str, Any]:
    """The cache contents; a missing file is empty, an unreadable one is reported and treated as empty."""
    path = cache_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return _empty_cache()
    except (OSError, ValueError) as err:
        warnings.warn(f"ignoring unreadable cost cache {path} ({err}); it will be rewritten", stacklevel=3)
        return _empty_cache()
    if not (isinstance(data, dict) and data.get("version") == CACHE_VERSION):
        warnings.warn(f"ignoring cost cache {path} in an unknown format; it will be rewritten", stacklevel=3)
        return _empty_cache()
    cache = _empty_cache()
    cache.update({k: data[k] for k in ("costs", "latency") if isinstance(data.get(k), dict)})
    return cache


def _warn_malformed(key: str) -> None:
    warnings.warn(f"ignoring malformed entry {key!r} in cost cache {cache_path()}; measuring it again", stacklevel=3)


def _update_cache(section: str, key: str, value: Any) -> None:
    """Store one entry, rewriting the cache file atomically (temp file in the same folder, then os.replace)."""
    cache = _read_cache()
    cache[section][key] = value
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True))


def _stored_fields(cost: ModelCost) -> dict[str, Any]:
    fields = asdict(cost)
    del fields["source"]
    return fields


# ----------------------------------------------------------------------------- counting


def _count(name: str, img_size: int | None) -> tuple[str, int, dict[str, int], int]:
    """(tag, input height, FLOPs per operator, parameter count) of one forward on the meta device."""
    _check_img_size(img_size)
    torch = _import_torch()
    tag = resolve_name(name)
    try:
        _, model, (height, width) = build_model(tag, img_size)
        counter = flop_counter()
        with counter:
            model(torch.empty(1, 3, height, width, device="meta"))
    except Exception as err:  # any failure inside timm's model code becomes one line naming model and size
        raise SaverSearchError(_count_failure(tag, img_size, err)) from err
    by_op = {str(op): int(flops) for op, flops in counter.get_flop_counts().get("Global", {}).items()}
    return tag, height, by_op, sum(p.numel() for p in model.parameters())


def _count_failure(tag: str, img_size: int | None, err: Exception) -> str:
    where = f"at {img_size}x{img_size}" if img_size else "at its default input size"
    fix = (
        "try its default resolution (omit <img_size>) or a multiple of its patch/window size"
        if img_size
        else "it cannot run on the meta device; measure its latency instead (costs --measure, or get_latency)"
    )
    return f"cannot count {tag} {where}: {type(err).__name__}: {_first_line(err)}; {fix}"


@lru_cache(maxsize=1)
def _extra_formulas() -> dict[Any, Any]:
    """FlopCounterMode formulas (FLOPs = 2 x MACs) for the norms and resizes timm's published counts include.

    Keys are the operator packets and their overloads: FlopCounterMode decomposes any overload it
    does not find, which would hide a training-mode batch norm from its packet's formula.
    """
    aten = _import_torch().ops.aten
    by_packet = {
        aten.native_batch_norm: _batch_norm_flops,
        aten._native_batch_norm_legit: _batch_norm_flops,
        aten._native_batch_norm_legit_no_training: _batch_norm_flops,
        aten.native_layer_norm: lambda x, shape, weight, *_, **__: _numel(x) * (10 if weight is not None else 8),
        aten.native_group_norm: lambda x, weight, *_, **__: _numel(x) * (10 if weight is not None else 8),
        aten.upsample_nearest2d: lambda *_, out_shape, **__: 2 * _numel(out_shape),
        aten.upsample_bilinear2d: lambda *_, out_shape, **__: 8 * _numel(out_shape),
    }
    return {
        key: formula
        for packet, formula in by_packet.items()
        for key in (packet, *(getattr(packet, name) for name in packet.overloads()))
    }


def _batch_norm_flops(x: Any, weight: Any, *args: Any, out_shape: Any = None) -> int:
    """2 FLOPs per element (1 without affine) in eval; 5 (4) in training mode, e.g. weight standardisation."""
    training = next((arg for arg in args if isinstance(arg, bool)), False)
    per_element = (5 if training else 2) if weight is not None else (4 if training else 1)
    return 2 * per_element * _numel(x)


def _numel(shape: Any) -> int:
    return math.prod(shape)


def _check_img_size(img_size: int | None) -> None:
    if img_size is not None and (isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1):
        raise SaverSearchError(f"img_size must be a positive integer (pixels per side), got {img_size!r}")


def _torch_device(device: str) -> Any:
    torch = _import_torch()
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
        _import_torch().cuda.synchronize(target)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def _unknown_model_message(timm: ModuleType, name: str) -> str:
    arch, tag = split_name(name)
    if tag and timm.is_model(arch):
        head = f"unknown pretrained tag '{name}' for {arch}"
        candidates = timm.list_models(f"{arch}.*", pretrained=True)
    else:
        head = f"unknown model '{name}'"
        candidates = timm.list_models() + timm.list_models(pretrained=True)
    matches = close_names(name, candidates, n=5)
    suggestion = f": did you mean {', '.join(matches)}?" if matches else ""
    return f"{head}{suggestion} {LIST_HINT}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"


def _import_torch() -> ModuleType:
    import torch

    return torch


def _import_timm() -> ModuleType:
    from saver_search.compat import import_timm

    return import_timm()
