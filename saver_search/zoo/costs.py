"""What a timm model costs per image: GMACs, GFLOPs and parameters at its real resolution.

Lookups go shipped table -> on-disk cache -> live count (:mod:`saver_search.zoo.flops`). A table hit for a full
pretrained tag imports neither torch nor timm, so a search over the zoo stays fast and never builds a model.
Measured latency lives in :mod:`saver_search.zoo.latency`, in the same disk cache.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from saver_search._validation import check_img_size
from saver_search.errors import SaverSearchError
from saver_search.files import atomic_write_text
from saver_search.zoo.flops import count_cost
from saver_search.zoo.names import resolve_timm_name
from saver_search.zoo.tables import ModelCost, table_cost

CACHE_VERSION = 1


# ----------------------------------------------------------------------------- public API


def get_cost(name: str, img_size: int | None = None) -> ModelCost:
    """Cost of ``name`` at ``img_size`` (default: the pretrained cfg's input size): table, then cache, then count."""
    check_img_size(img_size)
    hit = table_cost(name, img_size)
    if hit is not None:
        return hit
    tag = resolve_timm_name(name)
    hit = table_cost(tag, img_size)
    if hit is not None:
        return hit
    key = cost_key(tag, img_size)
    entry = read_cache()["costs"].get(key)
    if entry is not None:
        try:
            return ModelCost(**entry, source="cache")
        except TypeError:
            warn_malformed(key)
    cost = count_cost(tag, img_size)
    update_cache("costs", key, _stored_fields(cost))
    return cost


def cache_path() -> Path:
    """The cost/latency cache file: ``$SAVER_SEARCH_CACHE/costs.json``, default ``~/.cache/saver_search/costs.json``."""
    root = os.environ.get("SAVER_SEARCH_CACHE") or Path.home() / ".cache" / "saver_search"
    return Path(root) / "costs.json"


# ----------------------------------------------------------------------------- disk cache


def cost_key(tag: str, img_size: int | None) -> str:
    return f"{tag}@{img_size or 'default'}"


def _empty_cache() -> dict[str, Any]:
    return {"version": CACHE_VERSION, "costs": {}, "latency": {}}


def read_cache() -> dict[str, Any]:
    """The cache contents; a missing file is empty, an unreadable one is reported and treated as empty."""
    path = cache_path()
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):  # none yet (a folder that is a file fails when written)
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


def warn_malformed(key: str) -> None:
    warnings.warn(f"ignoring malformed entry {key!r} in cost cache {cache_path()}; measuring it again", stacklevel=3)


def update_cache(section: str, key: str, value: Any) -> None:
    """Store one entry, rewriting the cache file atomically (temp file in the same folder, then os.replace)."""
    cache = read_cache()
    cache[section][key] = value
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True))
    except OSError as err:
        raise SaverSearchError(f"cannot write the cost cache {path}: {err.strerror or err}; point SAVER_SEARCH_CACHE "
                               "at a folder you can write to") from err


def _stored_fields(cost: ModelCost) -> dict[str, Any]:
    fields = asdict(cost)
    del fields["source"]
    return fields
