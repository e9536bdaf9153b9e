"""Search spaces: which candidates, how many stages, threshold mode and range, sampler, trials (YAML)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from saver_search.errors import SaverSearchError
from saver_search.naming import split_name

ThresholdMode = Literal["exact", "sampled"]
SamplerName = Literal["auto", "tpe", "random", "nsga2"]
THRESHOLD_MODES: tuple[ThresholdMode, ...] = ("exact", "sampled")
SAMPLERS: tuple[SamplerName, ...] = ("auto", "tpe", "random", "nsga2")  # exact mode queues every candidate once
DEFAULT_SPACE_NAME = "default.yaml"  # in search_spaces/, shipped as the package saver_search.search_spaces


@dataclass(frozen=True)
class CandidateFilter:
    """Which models of a data source may be the first stage."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    pretrained_tags: tuple[str, ...] = ("*",)
    max_relative_cost: float = 1.0

    def matches(self, name: str) -> bool:
        """Whether ``name`` passes the name and tag patterns (cost is checked by the search)."""
        tag = split_name(name)[1]
        return (
            any(fnmatch.fnmatchcase(name, p) for p in self.include)
            and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)
            and any(fnmatch.fnmatchcase(tag, p) for p in self.pretrained_tags)
        )


@dataclass(frozen=True)
class SearchSpace:
    """Everything a search explores besides the data, the target and the budget."""

    candidates: CandidateFilter = field(default_factory=CandidateFilter)
    stages: int = 2
    threshold_mode: ThresholdMode = "exact"
    threshold_low: float = 0.0
    threshold_high: float = 1.0
    sampler: SamplerName = "auto"
    trials: int | None = None
    seed: int = 0
    source: str = "built-in defaults"

    def with_overrides(self, **changes: Any) -> "SearchSpace":
        """A copy with the given fields replaced, skipping those given as None."""
        space = replace(self, **{k: v for k, v in changes.items() if v is not None})
        _check_space(space, "command line")
        return space


def _expect(condition: bool, where: str, key: str, message: str) -> None:
    if not condition:
        raise SaverSearchError(f"{where}: key '{key}' {message}")


def _patterns(value: Any, where: str, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    _expect(isinstance(value, list) and all(isinstance(v, str) and v for v in value), where, key,
            "must be a list of name patterns such as ['resnet*', 'efficientnet_b0.*']")
    return tuple(value)


def _number(value: Any, where: str, key: str) -> float:
    _expect(isinstance(value, (int, float)) and not isinstance(value, bool), where, key, f"must be a number, got {value!r}")
    return float(value)


def _check_space(space: SearchSpace, where: str) -> None:
    _expect(space.stages == 2, where, "stages", f"must be 2 (two-stage cascades are searched for now), got {space.stages}")
    _expect(space.threshold_mode in THRESHOLD_MODES, where, "threshold.mode",
            f"must be one of {', '.join(THRESHOLD_MODES)}, got {space.threshold_mode!r}")
    _expect(0.0 <= space.threshold_low < space.threshold_high <= 1.0, where, "threshold.low/high",
            f"must satisfy 0 <= low < high <= 1, got {space.threshold_low}..{space.threshold_high}")
    _expect(space.sampler in SAMPLERS, where, "sampler", f"must be one of {', '.join(SAMPLERS)}, got {space.sampler!r}")
    _expect(space.trials is None or space.trials >= 1, where, "trials", f"must be a positive integer or null, got {space.trials}")
    _expect(space.candidates.max_relative_cost > 0, where, "candidates.max_relative_cost",
            f"must be > 0 (e.g. 0.5: candidates cost at most half the target), got {space.candidates.max_relative_cost}")


KNOWN_KEYS = {"candidates", "stages", "threshold", "sampler", "trials", "seed"}
CANDIDATE_KEYS = {"include", "exclude", "pretrained_tags", "max_relative_cost"}
THRESHOLD_KEYS = {"mode", "low", "high"}


def _check_keys(data: dict, known: set[str], where: str, prefix: str = "") -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise SaverSearchError(
            f"{where}: unknown key '{prefix}{unknown[0]}' (known: {', '.join(prefix + k for k in sorted(known))})"
        )


def parse_space(data: Any, where: str) -> SearchSpace:
    """Validate a parsed YAML mapping and build the search space; errors name the offending key."""
    if data is None or data == {}:
        raise SaverSearchError(
            f"{where} is empty: a space names at least its candidates (candidates.include, e.g. ['resnet*']); "
            "see search_spaces/default.yaml"
        )
    if not isinstance(data, dict):
        raise SaverSearchError(f"{where}: a search space must be a YAML mapping of keys ({', '.join(sorted(KNOWN_KEYS))})")
    _check_keys(data, KNOWN_KEYS, where)
    cand = data.get("candidates", {}) or {}
    _expect(isinstance(cand, dict), where, "candidates", "must be a mapping with include/exclude/pretrained_tags/max_relative_cost")
    _check_keys(cand, CANDIDATE_KEYS, where, "candidates.")
    threshold = data.get("threshold", {}) or {}
    _expect(isinstance(threshold, dict), where, "threshold", "must be a mapping with mode/low/high")
    _check_keys(threshold, THRESHOLD_KEYS, where, "threshold.")
    trials = data.get("trials")
    _expect(trials is None or (isinstance(trials, int) and not isinstance(trials, bool)), where, "trials",
            f"must be a positive integer or null, got {trials!r}")
    seed = data.get("seed", 0)
    _expect(isinstance(seed, int) and not isinstance(seed, bool), where, "seed", f"must be an integer, got {seed!r}")
    stages = data.get("stages", 2)
    _expect(isinstance(stages, int) and not isinstance(stages, bool), where, "stages", f"must be an integer, got {stages!r}")
    mode = threshold.get("mode", "exact")
    sampler = data.get("sampler", "auto")
    space = SearchSpace(
        candidates=CandidateFilter(
            include=_patterns(cand.get("include", ["*"]), where, "candidates.include"),
            exclude=_patterns(cand.get("exclude", []), where, "candidates.exclude") if cand.get("exclude") else (),
            pretrained_tags=_patterns(cand.get("pretrained_tags", ["*"]), where, "candidates.pretrained_tags"),
            max_relative_cost=_number(cand.get("max_relative_cost", 1.0), where, "candidates.max_relative_cost"),
        ),
        stages=stages,
        threshold_mode=str(mode),  # type: ignore[arg-type]  (checked below)
        threshold_low=_number(threshold.get("low", 0.0), where, "threshold.low"),
        threshold_high=_number(threshold.get("high", 1.0), where, "threshold.high"),
        sampler=str(sampler),  # type: ignore[arg-type]  (checked below)
        trials=trials,
        seed=seed,
        source=where,
    )
    _check_space(space, where)
    return space


def load_space(path: str | Path | None = None) -> SearchSpace:
    """Load and validate a search space YAML file (the shipped default when ``path`` is None)."""
    import yaml

    if path is None:
        from importlib.resources import files

        resource = files("saver_search.search_spaces") / DEFAULT_SPACE_NAME
        return parse_space(yaml.safe_load(resource.read_text()), f"search_spaces/{DEFAULT_SPACE_NAME}")
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SaverSearchError(f"search space file not found: {path}") from None
    except OSError as err:
        raise SaverSearchError(f"cannot read search space {path}: {err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SaverSearchError(f"{path}: malformed YAML{at}: {getattr(err, 'problem', None) or err}") from err
    return parse_space(data, str(path))
