"""Counting a timm model's FLOPs live: on the meta device, with timm's convention.

The model is built on the ``meta`` device (no memory, no weights), re-parameterized for inference
(RepVGG/MobileOne branches and conv+BN pairs fused, as deployed and as timm benchmarks it) and
``FlopCounterMode`` runs over one forward pass. The convention is timm's published one (fvcore):
multiply-accumulates of convolutions, matmuls and attention, plus normalisation layers (batch norm 2
per element, 1 without affine, 5/4 in training mode as in weight standardisation; layer/group norm 5
per element, 4 without affine) and resizes (nearest 1, bilinear 4 per output element). Norms matter
for tiny models (3.4% of efficientnet_b0, 7% of mobilenetv3_small_050) and hardly for large ones
(0.5% of resnet50, 0.1% of vit_base_patch16_224); without them 9% of timm's published figures would
be more than 2% off.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from saver_search._validation import check_img_size
from saver_search.compat import import_timm, import_torch
from saver_search.errors import SaverSearchError, first_line
from saver_search.zoo.names import resolve_timm_name
from saver_search.zoo.tables import ModelCost


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
    check_img_size(img_size)
    torch, timm = import_torch(), import_timm()
    tag = resolve_timm_name(name)
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


def _count(name: str, img_size: int | None) -> tuple[str, int, dict[str, int], int]:
    """(tag, input height, FLOPs per operator, parameter count) of one forward on the meta device."""
    check_img_size(img_size)
    torch = import_torch()
    tag = resolve_timm_name(name)
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
    return f"cannot count {tag} {where}: {type(err).__name__}: {first_line(err)}; {fix}"


@lru_cache(maxsize=1)
def _extra_formulas() -> dict[Any, Any]:
    """FlopCounterMode formulas (FLOPs = 2 x MACs) for the norms and resizes timm's published counts include.

    Keys are the operator packets and their overloads: FlopCounterMode decomposes any overload it
    does not find, which would hide a training-mode batch norm from its packet's formula.
    """
    aten = import_torch().ops.aten
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
