"""Model names: timm's ``arch.tag`` split in one place, and a user's name resolved against a source's models."""

from __future__ import annotations

import difflib
from types import ModuleType
from typing import Sequence

from saver_search.compat import import_timm
from saver_search.errors import UnknownModel
from saver_search.zoo.tables import default_tag

N_SUGGESTIONS = 3


def split_name(name: str) -> tuple[str, str]:
    """``"convnextv2_huge.fcmae_ft_in1k"`` -> ``("convnextv2_huge", "fcmae_ft_in1k")``; no tag -> ``(name, "")``."""
    arch, _, tag = name.partition(".")
    return arch, tag


def close_names(name: str, available: Sequence[str], n: int = N_SUGGESTIONS) -> list[str]:
    """Names of ``available`` close to ``name``: architectures that contain the one given (``efficientnet_b7``
    finds ``tf_efficientnet_b7.ns_jft_in1k``), then close architectures, then close full names."""
    by_arch: dict[str, list[str]] = {}
    for candidate in available:
        by_arch.setdefault(split_name(candidate)[0], []).append(candidate)
    arch = split_name(name)[0]
    containing = sorted((a for a in by_arch if arch in a and a != arch), key=lambda a: (len(a), a))
    arch_matches = containing + difflib.get_close_matches(arch, list(by_arch), n=n, cutoff=0.6)
    matches = [sorted(by_arch[arch])[0] for arch in arch_matches]
    matches += difflib.get_close_matches(name, list(available), n=n, cutoff=0.6)
    return list(dict.fromkeys(matches))[:n]


def resolve_model_name(name: str, available: Sequence[str], where: str) -> str:
    """Resolve a user-given model name against the models of a data source.

    A full name is taken as given. A bare timm architecture (no ``.tag``) resolves to timm's default pretrained
    tag when that is available, else to the only model of that architecture.

    Raises:
        UnknownModel: no such model (with close names), or a bare architecture with several tags and no default.
    """
    if name in available:
        return name
    arch, tag = split_name(name)
    if not tag:
        same_arch = [m for m in available if split_name(m)[0] == arch]
        if len(same_arch) == 1:
            return same_arch[0]
        if same_arch:
            default = default_tag(arch)
            if default in same_arch:
                return default
            raise UnknownModel(name, f"model '{name}' is ambiguous in {where}: it has {', '.join(sorted(same_arch))}; "
                                     "name one of them in full")
    close = close_names(name, available)
    hint = f" did you mean {', '.join(close)}?" if close else ""
    raise UnknownModel(name, f"unknown model '{name}' in {where}.{hint} "
                             f"({len(available)} models there; import or cache it first to use it)")


# ------------------------------------------------------------------ timm's registry (imports timm)


LIST_HINT = "(list: python -m saver_search costs --list PATTERN)"


def resolve_timm_name(name: str) -> str:
    """Full pretrained tag for ``name``: a bare architecture maps to timm's default tag, a full tag to itself."""
    timm = import_timm()
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
    return fnmatch.filter(import_timm().list_models(pretrained=True), pattern)


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
