"""A decoded image into a model's input: the resize, crop and normalisation its timm data config names.

One implementation in torch, used by the cache (:mod:`saver_search.inference.cache`, in its DataLoader workers) and by the
runtime (:mod:`saver_search.inference.runtime`, on the model's device), so that predictions made offline and online are
computed alike. It follows timm's evaluation transform: resize so that the crop is ``crop_pct`` of the resized
image (shorter side to ``floor(size / crop_pct)`` for ``crop_mode`` "center", both sides for "squash"), centre
crop to the input size, then ``(x / 255 - mean) / std``. Resizing is antialiased and rounds back to uint8, like
torchvision on uint8 tensors.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from saver_search.errors import SaverSearchError

CROP_MODES = ("center", "squash")
INTERPOLATIONS = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}


@dataclass(frozen=True)
class DataConfig:
    """timm's data config of a model: input size ``(3, height, width)``, crop share and mode, interpolation, mean, std."""

    input_size: tuple[int, int, int]
    crop_pct: float
    crop_mode: str
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "DataConfig":
        """From ``timm.data.resolve_model_data_config(model)`` or a stored copy; raises on what this cannot do."""
        try:
            made = cls(input_size=tuple(int(v) for v in config["input_size"]), crop_pct=float(config.get("crop_pct", 0.875)),
                       crop_mode=str(config.get("crop_mode", "center")), interpolation=str(config["interpolation"]),
                       mean=tuple(float(v) for v in config["mean"]), std=tuple(float(v) for v in config["std"]))
        except (KeyError, TypeError, ValueError) as err:
            raise SaverSearchError(f"data config {dict(config)!r} lacks or garbles {err}: it needs input_size, "
                                   "interpolation, mean and std (timm's resolve_model_data_config)") from err
        if made.crop_mode not in CROP_MODES:
            raise SaverSearchError(f"crop mode {made.crop_mode!r} is not supported; use one of {', '.join(CROP_MODES)}")
        if made.interpolation not in INTERPOLATIONS:
            raise SaverSearchError(f"interpolation {made.interpolation!r} is not supported; use one of "
                                   f"{', '.join(INTERPOLATIONS)}")
        return made

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A decoded RGB image as a uint8 tensor ``(3, height, width)``."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


def resize_crop(image: torch.Tensor, config: DataConfig) -> torch.Tensor:
    """A uint8 image ``(3, H, W)`` resized and centre-cropped to the config's input size, still uint8 (on its device)."""
    _, out_h, out_w = config.input_size
    height, width = image.shape[-2:]
    if config.crop_mode == "squash":
        size = (math.floor(out_h / config.crop_pct), math.floor(out_w / config.crop_pct))
    else:  # center: the shorter side to floor(side / crop_pct), the longer one in proportion (as torchvision)
        scale = math.floor(min(out_h, out_w) / config.crop_pct)
        size = (scale, int(scale * width / height)) if height <= width else (int(scale * height / width), scale)
    mode = INTERPOLATIONS[config.interpolation]
    resized = F.interpolate(image[None].float(), size=size, mode=mode,
                            **({} if mode == "nearest" else {"align_corners": False, "antialias": True}))[0]
    resized = resized.round_().clamp_(0, 255).to(torch.uint8)
    top, left = int(round((size[0] - out_h) / 2.0)), int(round((size[1] - out_w) / 2.0))
    return resized[:, top: top + out_h, left: left + out_w]


def normalize(batch: torch.Tensor, config: DataConfig) -> torch.Tensor:
    """A uint8 batch ``(B, 3, h, w)`` as the float input the model expects: ``(x / 255 - mean) / std``."""
    mean = torch.tensor(config.mean, device=batch.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(config.std, device=batch.device).view(1, 3, 1, 1) * 255
    return batch.float().sub_(mean).div_(std)
