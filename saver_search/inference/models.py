"""Loading a timm classifier to run: its weights (hub, local checkpoint, or seeded random init), device and
precision. One module loads models, for the cache loop (:mod:`saver_search.inference.cache`) and anything else that runs
them; it leaves global state alone (the random init runs under a forked RNG).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from saver_search.compat import import_timm
from saver_search.errors import InvalidParameter, SaverSearchError, UnknownModel, first_line

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


@dataclass(frozen=True)
class Weights:
    """Where a model's weights come from: timm's pretrained hub weights, a local checkpoint, or random init."""

    checkpoint: Path | None = None
    pretrained: bool = True

    @property
    def kind(self) -> str:
        """"checkpoint", "hub" or "random"."""
        return "checkpoint" if self.checkpoint is not None else "hub" if self.pretrained else "random"

    @property
    def source(self) -> str:
        if self.checkpoint is not None:
            return f"cached: checkpoint {self.checkpoint}"
        return "cached: pretrained hub weights" if self.pretrained else "cached: random init"


def resolve_device(device: str | None) -> torch.device:
    """The torch device for ``device`` ("cpu", "cuda", "cuda:1"); None means CUDA when available."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        target = None
    if target is None or target.type not in ("cpu", "cuda") or (target.type == "cpu" and target.index):
        raise InvalidParameter("device", f"must be cpu, cuda or cuda:N, got {device!r}")
    if target.type == "cuda" and not torch.cuda.is_available():
        raise SaverSearchError("<device=cuda> was asked for but CUDA is not available here (torch "
                               f"{torch.__version__}); use <device=cpu> or a CUDA build of torch")
    if target.index is not None and target.type == "cuda" and target.index >= torch.cuda.device_count():
        raise InvalidParameter("device", f"is {device}, but this machine has {torch.cuda.device_count()} CUDA "
                               f"devices (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    return target


def resolve_amp(amp: str | None, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``amp`` ("bf16", "fp16", "none"); None means bf16 on CUDA and full precision on CPU."""
    if amp is None:
        return torch.bfloat16 if device.type == "cuda" else None
    return AMP_DTYPES[amp]


def load_model(name: str, weights: Weights) -> torch.nn.Module:
    """Build timm model ``name`` (a full pretrained tag, whose pretrained cfg sets the data config) in eval mode."""
    timm = import_timm()
    if weights.checkpoint is None and weights.pretrained:
        if not _hub_reachable() and not _in_hub_cache(name):
            raise SaverSearchError(
                f"cannot load the pretrained weights of {name}: {_hub_host()} cannot be reached from here and the "
                f"Hugging Face cache has no copy; connect to the network, or pass a local <checkpoint> file for {name}")
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as err:  # hub/network/cache failures come in many types
            raise SaverSearchError(
                f"cannot load the pretrained weights of {name} ({type(err).__name__}: {first_line(err)}); "
                f"check the network or the Hugging Face cache, or pass a local <checkpoint> file for {name}"
            ) from err
        return model.eval()
    check_architecture(name)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(0)  # random init is the same in every run, so resumed and sharded runs agree
        model = timm.create_model(name, pretrained=False)
    if weights.checkpoint is not None:
        load_checkpoint(model, name, weights.checkpoint)
    return model.eval()


def _in_hub_cache(name: str) -> bool:
    """Whether the local Hugging Face cache holds a tag's pretrained weights (then they load offline too).

    Why ask before loading: offline, timm's hub download of weights the cache lacks retries each file five times
    with backoff (measured: 10 retry lines and 50 s) before it fails; a host that does not resolve and an empty
    cache can say so at once."""
    from huggingface_hub import try_to_load_from_cache

    cfg = import_timm().models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if not hub_id:
        return False
    filenames = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else ["model.safetensors",
                                                                                     "pytorch_model.bin"]
    return any(isinstance(try_to_load_from_cache(hub_id, filename), str) for filename in filenames)


def _hub_host() -> str:
    from urllib.parse import urlparse

    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).hostname or constants.ENDPOINT


def _hub_reachable() -> bool:
    """Whether the hub's host name resolves (an offline machine fails at once, before any retry); behind an HTTPS
    proxy the proxy resolves it, so this is not checked."""
    import socket
    from urllib.request import getproxies

    if getproxies().get("https"):
        return True
    try:
        socket.getaddrinfo(_hub_host(), 443)
    except OSError:
        return False
    return True


def check_architecture(name: str) -> None:
    """Raise unless timm can build ``name`` (a tag or a bare architecture)."""
    timm = import_timm()
    if not timm.is_model(name):
        raise UnknownModel(name, f"timm has no architecture '{name}' ({timm.__version__}): give a timm model tag, "
                           "e.g. resnet50.a1_in1k (python -m saver_search costs --list 'resnet*')")


def check_before_caching(names: list[str], checkpoints: dict[str, Path], n_classes: int,
                         store: str | None = None) -> None:
    """What would make a cache fail after its store exists, checked before: an unknown architecture, a model
    whose classes are not the store's ``n_classes`` (from its pretrained config, or its checkpoint's head; the
    rule the cache itself applies), a checkpoint that does not load into its model. ``store``: the existing store
    whose classes ``n_classes`` are (None: a store still to be made with them)."""
    timm = import_timm()
    for name in names:
        check_architecture(name)
        if name in checkpoints:
            classes = int(getattr(load_model(name, Weights(checkpoint=checkpoints[name])), "num_classes", 0) or 0)
        else:
            classes = int(timm.models.get_pretrained_cfg_value(name, "num_classes") or 0)
        if classes and classes != n_classes and store is not None:
            raise SaverSearchError(f"{name} predicts {classes} classes but store {store} has {n_classes}; use a "
                                   "model with the store's classes (or a new store made with <n_classes> to match)")
        if classes and classes != n_classes:
            raise InvalidParameter("n_classes", f"is {n_classes}, but {name} predicts {classes} classes: give the "
                                   f"number of classes its predictions index (e.g. <n_classes={classes}>)")


def load_checkpoint(model: torch.nn.Module, name: str, path: Path) -> None:
    """Load a state dict (plain, or under state_dict/model/EMA keys) into ``model``; every tensor must fit."""
    timm = import_timm()
    try:
        state = timm.models.load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as err:  # torch.load / safetensors raise many types for unreadable files
        raise SaverSearchError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {first_line(err)}); it must be a PyTorch "
            "state dict (.pth/.pt/.bin, tensors only) or a .safetensors file"
        ) from err
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shape = {key: tuple(getattr(value, "shape", ())) for key, value in state.items()}
    wrong = [key for key in expected if key in state and shape[key] != expected[key].shape]
    if missing or unexpected or wrong:
        named = (("missing", missing), ("unexpected", unexpected))
        problems = [f"{len(keys)} {what} (first: {keys[0]})" for what, keys in named if keys]
        if wrong:
            key = wrong[0]
            shapes = f"{shape[key]} vs {tuple(expected[key].shape)}"
            problems.append(f"{len(wrong)} of the wrong shape (first: {key} {shapes})")
        raise SaverSearchError(
            f"checkpoint {path} does not fit timm's {name}: of its {len(state)} tensors, {'; '.join(problems)}; "
            f"it must be a state dict of timm.create_model('{name}') with the same keys and shapes"
        )
    model.load_state_dict(state, strict=True)


def file_sha256(path: Path | None) -> str | None:
    """The sha256 of a file (e.g. a checkpoint, to record which weights made predictions); None for None."""
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
