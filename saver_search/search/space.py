"""Search spaces: which candidates, how many stages, committees, scores, threshold mode and range, sampler,
trials (YAML).

Two kinds of search. **Pairs** (the default: 2 stages, single models, score ``maxprob``): one trial per candidate,
its threshold solved exactly (or sampled, ``threshold.mode: sampled``). **Cascades** (``stages: {min: 2, max: 4}``,
``committees: {members: 2}`` or any other score): the space is enumerated family by family (every pair; 3 stages
from each of the ``enumeration.first_stages`` best pair companions; 4 stages from each two of the
``enumeration.four_stage_pool`` best; committees of the ``enumeration.committee_pool`` best members); the
thresholds of all but the last stage before the target come from a grid of ``threshold.grid`` values in (low, high],
the last one is solved exactly at every cut. A wider space holds every family of a narrower one, so on the
selection images it never finds a costlier cascade; the guarantee certifies one learned path whatever the space
holds (see :mod:`saver_search.search.objective`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from saver_search.cascade.scores import DEFAULT_SCORE, SCORES
from saver_search.errors import InvalidParameter, SaverSearchError
from saver_search.zoo.names import split_name

ThresholdMode = Literal["exact", "sampled"]
SamplerName = Literal["auto", "tpe", "random", "nsga2"]
THRESHOLD_MODES: tuple[ThresholdMode, ...] = ("exact", "sampled")
SAMPLERS: tuple[SamplerName, ...] = ("auto", "tpe", "random", "nsga2")  # exact mode queues every candidate once
DEFAULT_SPACE_NAME = "default.yaml"  # in search_spaces/, shipped as the package saver_search.search_spaces
STAGE_RANGE = (2, 4)
MAX_MEMBERS = 3
DEFAULT_GRID = 20
# How far an enumerated cascade search reaches (see saver_search.search.objective.CascadeObjective.work): 3 stages start at
# one of the best pair companions; committees are drawn from the best members; 4 stages start at two of the best.
DEFAULT_FIRST_STAGES = 40
DEFAULT_COMMITTEE_POOL = 12
DEFAULT_FOUR_STAGE_POOL = 8


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


def searches_cascades(stages: tuple[int, int], committee_members: int, scores: tuple[str, ...]) -> bool:
    """The one rule: a space of more than 2 stages, committees or another score than the default searches cascades
    (families of structures); otherwise it searches plain pairs (one trial per candidate)."""
    return stages != (2, 2) or committee_members > 1 or tuple(scores) != (DEFAULT_SCORE,)


@dataclass(frozen=True)
class SearchSpace:
    """Everything a search explores besides the data, the target and the budget."""

    candidates: CandidateFilter = field(default_factory=CandidateFilter)
    min_stages: int = 2
    max_stages: int = 2
    committee_members: int = 1
    scores: tuple[str, ...] = (DEFAULT_SCORE,)
    threshold_mode: ThresholdMode = "exact"
    threshold_low: float = 0.0
    threshold_high: float = 1.0
    threshold_grid: int = DEFAULT_GRID
    sampler: SamplerName = "auto"
    trials: int | None = None
    seed: int = 0
    first_stages: int = DEFAULT_FIRST_STAGES
    committee_pool: int = DEFAULT_COMMITTEE_POOL
    four_stage_pool: int = DEFAULT_FOUR_STAGE_POOL
    source: str = "built-in defaults"

    @property
    def cascades(self) -> bool:
        """Whether this space searches cascades (more stages, committees or other scores) rather than pairs."""
        return searches_cascades((self.min_stages, self.max_stages), self.committee_members, self.scores)

    def with_overrides(self, **changes: Any) -> "SearchSpace":
        """A copy with the given fields replaced, skipping those given as None."""
        space = replace(self, **{k: v for k, v in changes.items() if v is not None})
        try:
            _check_space(space, "overrides")
        except _SpaceKeyError as err:  # an override is a parameter: name it so (the CLI shows its flag)
            raise InvalidParameter(OVERRIDE_PARAMETERS.get(err.key, err.key), err.problem) from None
        return space


class _SpaceKeyError(SaverSearchError):
    """A key of a space with a bad value; ``key`` as the YAML names it."""

    def __init__(self, where: str, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"{where}: key '{key}' {problem}")


# a YAML key -> the parameter of with_overrides that sets it
OVERRIDE_PARAMETERS = {"committees.members": "committee_members", "score": "scores", "threshold.mode": "threshold_mode"}


def _expect(condition: bool, where: str, key: str, message: str) -> None:
    if not condition:
        raise _SpaceKeyError(where, key, message)


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
    low, high = STAGE_RANGE
    _expect(low <= space.min_stages <= space.max_stages <= high, where, "stages",
            f"must be between {low} and {high} stages (the target is the last), min <= max; got "
            f"{space.min_stages}..{space.max_stages}")
    _expect(1 <= space.committee_members <= MAX_MEMBERS, where, "committees.members",
            f"must be 2 or {MAX_MEMBERS} (the most models a committee stage averages), got {space.committee_members}")
    _expect(bool(space.scores), where, "score", f"must name at least one score ({', '.join(SCORES)})")
    for name in space.scores:
        _expect(name in SCORES, where, "score", f"names unknown score '{name}'; known: {', '.join(SCORES)}")
    _expect(2 <= space.threshold_grid <= 1000, where, "threshold.grid",
            f"must be an integer in 2..1000 (values tried for earlier stages' thresholds), got {space.threshold_grid}")
    _expect(not (space.cascades and space.threshold_mode == "sampled"), where, "threshold.mode",
            "must be exact for cascade searches (more than 2 stages, committees or scores other than maxprob): "
            "the last threshold is solved exactly, earlier ones come from threshold.grid")
    _expect(space.threshold_mode in THRESHOLD_MODES, where, "threshold.mode",
            f"must be one of {', '.join(THRESHOLD_MODES)}, got {space.threshold_mode!r}")
    _expect(0.0 <= space.threshold_low < space.threshold_high <= 1.0, where, "threshold.low/high",
            f"must satisfy 0 <= low < high <= 1, got {space.threshold_low}..{space.threshold_high}")
    _expect(space.sampler in SAMPLERS, where, "sampler", f"must be one of {', '.join(SAMPLERS)}, got {space.sampler!r}")
    _expect(space.trials is None or space.trials >= 1, where, "trials", f"must be a positive integer or null, got {space.trials}")
    for key in sorted(ENUMERATION_KEYS):
        _expect(getattr(space, key) >= 1, where, f"enumeration.{key}", f"must be a positive integer, got {getattr(space, key)}")
    _expect(space.candidates.max_relative_cost > 0, where, "candidates.max_relative_cost",
            f"must be > 0 (e.g. 0.5: candidates cost at most half the target), got {space.candidates.max_relative_cost}")


KNOWN_KEYS = {"candidates", "stages", "committees", "score", "threshold", "sampler", "trials", "seed", "enumeration"}
ENUMERATION_KEYS = {"first_stages", "committee_pool", "four_stage_pool"}
CANDIDATE_KEYS = {"include", "exclude", "pretrained_tags", "max_relative_cost"}
THRESHOLD_KEYS = {"mode", "low", "high", "grid"}
STAGES_KEYS = {"min", "max"}
COMMITTEE_KEYS = {"members"}


def _integer(value: Any, where: str, key: str) -> int:
    _expect(isinstance(value, int) and not isinstance(value, bool), where, key, f"must be an integer, got {value!r}")
    return int(value)


def _stages(value: Any, where: str) -> tuple[int, int]:
    """``stages: 3`` or ``stages: {min: 2, max: 4}``."""
    if isinstance(value, dict):
        _check_keys(value, STAGES_KEYS, where, "stages.")
        return _integer(value.get("min", 2), where, "stages.min"), _integer(value.get("max", 2), where, "stages.max")
    count = _integer(value, where, "stages")
    return count, count


def _committee_members(value: Any, where: str) -> int:
    """``committees: {members: 2}``; absent or null: single models only."""
    if value is None:
        return 1
    _expect(isinstance(value, dict), where, "committees", "must be a mapping such as {members: 2}")
    _check_keys(value, COMMITTEE_KEYS, where, "committees.")
    members = _integer(value.get("members", 2), where, "committees.members")
    _expect(members != 1, where, "committees.members",
            "is 1: a committee of one model is a single model; leave committees out, or set members to 2 or 3")
    return members


def _scores(value: Any, where: str) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    _expect(isinstance(names, list) and all(isinstance(n, str) for n in names), where, "score",
            f"must be a score name or a list of them ({', '.join(SCORES)}), got {value!r}")
    return tuple(names)


@dataclass(frozen=True, order=True)
class Shape:
    """A kind of cascade: its number of stages (the target included) and whether any stage is a committee; the
    families of an enumerated search are queued shape by shape (see :mod:`saver_search.search.objective`)."""

    stages: int
    committees: bool = False

    @property
    def label(self) -> str:
        """How the shape is named in trial parameters and tables: "3 stages", "2 stages with committees"."""
        return f"{self.stages} stages" + (" with committees" if self.committees else "")

    @classmethod
    def from_label(cls, label: str) -> "Shape":
        count, _, rest = label.partition(" stages")
        return cls(int(count), rest == " with committees")


def space_shapes(min_stages: int, max_stages: int, committee_members: int) -> list[Shape]:
    """The shapes of a space, simplest first: each number of stages, single models then (if allowed) committees."""
    kinds = (False, True) if committee_members > 1 else (False,)
    return [Shape(stages, committees) for stages in range(min_stages, max_stages + 1) for committees in kinds]


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
    min_stages, max_stages = _stages(data.get("stages", 2), where)
    enumeration = data.get("enumeration", {}) or {}
    _expect(isinstance(enumeration, dict), where, "enumeration", f"must be a mapping with {', '.join(sorted(ENUMERATION_KEYS))}")
    _check_keys(enumeration, ENUMERATION_KEYS, where, "enumeration.")
    mode = threshold.get("mode", "exact")
    sampler = data.get("sampler", "auto")
    space = SearchSpace(
        candidates=CandidateFilter(
            include=_patterns(cand.get("include", ["*"]), where, "candidates.include"),
            exclude=_patterns(cand.get("exclude", []), where, "candidates.exclude") if cand.get("exclude") else (),
            pretrained_tags=_patterns(cand.get("pretrained_tags", ["*"]), where, "candidates.pretrained_tags"),
            max_relative_cost=_number(cand.get("max_relative_cost", 1.0), where, "candidates.max_relative_cost"),
        ),
        min_stages=min_stages,
        max_stages=max_stages,
        committee_members=_committee_members(data.get("committees"), where),
        scores=_scores(data.get("score", DEFAULT_SCORE), where),
        threshold_mode=str(mode),  # type: ignore[arg-type]  (checked below)
        threshold_low=_number(threshold.get("low", 0.0), where, "threshold.low"),
        threshold_high=_number(threshold.get("high", 1.0), where, "threshold.high"),
        threshold_grid=_integer(threshold.get("grid", DEFAULT_GRID), where, "threshold.grid"),
        sampler=str(sampler),  # type: ignore[arg-type]  (checked below)
        trials=trials,
        seed=seed,
        first_stages=_integer(enumeration.get("first_stages", DEFAULT_FIRST_STAGES), where, "enumeration.first_stages"),
        committee_pool=_integer(enumeration.get("committee_pool", DEFAULT_COMMITTEE_POOL), where,
                                "enumeration.committee_pool"),
        four_stage_pool=_integer(enumeration.get("four_stage_pool", DEFAULT_FOUR_STAGE_POOL), where,
                                 "enumeration.four_stage_pool"),
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
        raise InvalidParameter("space", f"file not found: {path}") from None
    except UnicodeDecodeError:
        raise InvalidParameter("space", f"{path} is not a text file: give a search space YAML file") from None
    except OSError as err:
        raise InvalidParameter("space", f"cannot read {path}: {err.strerror or err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SaverSearchError(f"{path}: malformed YAML{at}: {getattr(err, 'problem', None) or err}") from err
    return parse_space(data, str(path))
