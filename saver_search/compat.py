"""Import timm on machines whose torchvision wheel does not match the installed torch build."""

from __future__ import annotations

import sys
from types import ModuleType


def import_timm() -> ModuleType:
    """Return the timm module.

    A CUDA build of torchvision next to a CPU build of torch fails at import with
    ``operator torchvision::nms does not exist``: its fake-tensor registrations name operators
    whose C++ kernels were not loaded. Defining the two missing schemas lets the import finish;
    timm's classifiers never call them.
    """
    try:
        import timm
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        import torch

        library = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _keep_alive.append(library)
        for module in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm")]:
            del sys.modules[module]
        import timm
    return timm



def import_torch() -> ModuleType:
    """The torch module, imported on first use (so that modules which only sometimes need it stay light)."""
    import torch

    return torch


_keep_alive: list = []
