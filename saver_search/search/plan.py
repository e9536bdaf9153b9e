"""``plan``: which models to cache before a real search, and how many GPU-hours caching them takes.

The simulated search (the embedded zoo) ranks cascades; the models of the best ones, the target first, form the
shortlist, each priced by timm's published forward throughput at its own resolution (``gpu_images_per_s`` of the
zoo table: one RTX 5090 under AMP). Everything here is an estimate and says so: the accuracies are simulated, and
the throughput is the forward pass alone on another GPU (caching also decodes JPEGs; a slower GPU, a smaller
batch or a busy disk make it longer).

Why cascades and not single models: a companion saves only together with the stages it runs with, so a cut to a
GPU-hour budget (``gpu_hours``) takes whole cascades, best first, and skips one whose new models no longer fit.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any, Iterable

from saver_search._validation import check_number
from saver_search.cascade.results import Outcome, rank_outcomes
from saver_search.errors import InvalidParameter
from saver_search.predictions.sources import PredictionSource, open_source
from saver_search.search.run import check_max_drop, prepare_search, study_outcomes
from saver_search.search.space import SearchSpace, load_space
from saver_search.zoo.tables import load_zoo

DEFAULT_IMAGES = 50_000  # the ImageNet-1k validation set
DEFAULT_CASCADES = 10
THROUGHPUT_SOURCE = ("timm's published forward throughput (benchmark-infer-amp-nchw-pt291-cu130-5090.csv): one "
                     "RTX 5090, AMP, at each model's own resolution and batch size")


@dataclass(frozen=True)
class PlanModel:
    """One model to cache: why (the best cascade it is in, its simulated held-out GMACs and the compute that
    cascade saves), and what caching it costs (published images/s, GPU-hours on the plan's images).
    ``throughput``: "published", or "scaled from GMACs" for a model timm's benchmark does not list.
    ``cached``: already in the store the plan was given, so it takes no GPU time."""

    name: str
    role: str  # "target", "answer" (a stage of the search's answer) or "companion"
    cascade: list[str]
    cascade_gmacs: float
    saving: float  # fraction of the target's GMACs the cascade saves
    images_per_s: float
    throughput: str
    gpu_hours: float
    cached: bool = False


@dataclass(frozen=True)
class CachingPlan:
    """The shortlist of models worth caching for a target and budget, best first, with the GPU-hours they take.
    ``left_out``: models of the ranked cascades that did not fit in ``gpu_hours_limit``."""

    target: str
    max_drop: float
    images: int
    gpu_hours_limit: float | None
    models: list[PlanModel]
    left_out: list[PlanModel]
    searches: list[str]
    simulated: bool
    throughput_source: str = THROUGHPUT_SOURCE
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_hours(self) -> float:
        return sum(model.gpu_hours for model in self.models)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gpu_hours": self.gpu_hours}

    def models_file(self) -> str:
        """The shortlist as a models file for ``cache --models @FILE``: one name per line, ``#`` comments."""
        header = [
            f"# saver_search plan: models to cache for {self.target} at --max-drop {self.max_drop:g}, best first",
            f"# estimate: {self.gpu_hours:.2f} GPU-hours on {self.images:,} images ({THROUGHPUT_SOURCE})",
            "# accuracies behind the ranking are simulated; cache with: python -m saver_search cache --models @THIS_FILE ...",
        ]
        return "\n".join([*header, *(model.name for model in self.models)]) + "\n"


@cache
def _gmac_rate() -> float:
    """Median published images/s x GMACs over the zoo: prices a model the benchmark does not list by its GMACs."""
    return statistics.median(e.gpu_images_per_s * e.published_gmacs for e in load_zoo().values() if e.published_gmacs)


def images_per_s(name: str, gmacs: float) -> tuple[float, str]:
    """Published forward throughput of ``name`` (images/s) and where the figure comes from."""
    entry = load_zoo().get(name)
    if entry is not None:
        return entry.gpu_images_per_s, "published"
    return _gmac_rate() / max(gmacs, 1e-3), "scaled from GMACs"


def plan_caching(
    target: str,
    max_drop: float,
    space: SearchSpace | None = None,
    *,
    source: PredictionSource | None = None,
    images: int = DEFAULT_IMAGES,
    gpu_hours: float | None = None,
    cascades: int = DEFAULT_CASCADES,
    cached: Iterable[str] = (),
    progress: bool = False,
) -> CachingPlan:
    """Search the simulated zoo (pairs, and the space's own shapes) and list the models of the ``cascades`` best
    cascades, the target and the search's answer first, priced for caching ``images`` images.

    Args:
        target: the big model (a bare timm architecture resolves to its default tag).
        max_drop: the accuracy budget in top-1 points.
        space: the search space (default: ``search_spaces/default.yaml``).
        source: the predictions to rank cascades on (default: the simulated zoo).
        images: how many images will be cached (default 50,000: ImageNet-1k val).
        gpu_hours: keep only what fits in this many GPU-hours (whole cascades, best first).
        cascades: how many of the best distinct cascades to take the models of.
        cached: models already cached (e.g. a store's ``model_names()``): listed, at no GPU time.
    """
    max_drop = check_max_drop(max_drop)
    check_number(images, "images", low=1, integer=True)
    check_number(cascades, "cascades", low=1, integer=True)
    if gpu_hours is not None:
        check_number(gpu_hours, "gpu_hours", low=0, low_open=True, unit="GPU-hours")
    space = load_space(None) if space is None else space
    source = open_source(None) if source is None else source
    cached = set(cached)
    resolved = source.resolve(target)
    if gpu_hours is not None and resolved not in cached:  # known before any search: the target alone must fit
        target_hours = images / images_per_s(resolved, source.gmacs(resolved))[0] / 3600
        if target_hours > gpu_hours:
            raise InvalidParameter("gpu_hours", f"is {gpu_hours:g}, but caching the target {resolved} "
                                   f"alone takes {target_hours:.2f} GPU-hours on {images:,} images: give at least that")
    shapes = [space] if space.min_stages <= 2 else [space.with_overrides(min_stages=2, max_stages=2), space]
    answers: list[Outcome] = []
    ranked: list[Outcome] = []
    searches: list[str] = []
    with _quiet_optuna():
        for shape in shapes:
            prepared = prepare_search(source, target, max_drop, shape)
            result = prepared.run(progress=progress)
            if not result.best.target_alone:
                answers.append(result.best)
            ranked.extend(study_outcomes(prepared.open()))
            searches.append(_shape_label(shape))
    target_name, target_gmacs = result.target.name, result.target.gmacs
    answers.sort(key=lambda o: o.reported.gmacs)
    order = [*answers, *(o for o in rank_outcomes(ranked) if not o.target_alone)]
    chosen = _distinct(order, cascades + len(answers))
    return _price(target_name, target_gmacs, max_drop, images, gpu_hours, chosen, answers, searches, source,
                  cached)


class _quiet_optuna:
    """Optuna's log at WARNING for the plan's searches, restored afterwards (the library changes no global state)."""

    def __enter__(self) -> None:
        import optuna

        self.previous = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        import optuna

        optuna.logging.set_verbosity(self.previous)


def _shape_label(space: SearchSpace) -> str:
    stages = str(space.min_stages) if space.min_stages == space.max_stages else f"{space.min_stages}..{space.max_stages}"
    committee = f", committees of up to {space.committee_members}" if space.committee_members > 1 else ""
    return f"{stages} stages{committee}"


def _distinct(outcomes: list[Outcome], count: int) -> list[Outcome]:
    """The first ``count`` outcomes with distinct stages."""
    seen: dict[tuple[tuple[str, ...], ...], Outcome] = {}
    for outcome in outcomes:
        seen.setdefault(outcome.cascade.stages, outcome)
        if len(seen) == count:
            break
    return list(seen.values())


def _price(target: str, target_gmacs: float, max_drop: float, images: int, limit: float | None,
           cascades: list[Outcome], answers: list[Outcome], searches: list[str],
           source: PredictionSource, cached: set[str]) -> CachingPlan:
    """Walk the cascades best first; keep a cascade's new models while they fit in ``limit`` GPU-hours."""
    answer_models = {m for outcome in answers for stage in outcome.cascade.stages for m in stage}

    def priced(name: str, role: str, outcome: Outcome | None) -> PlanModel:
        gmacs = target_gmacs if name == target else source.gmacs(name)
        rate, origin = images_per_s(name, gmacs)
        cascade_gmacs = target_gmacs if outcome is None else outcome.reported.gmacs
        return PlanModel(name=name, role=role, cascade=[target] if outcome is None else outcome.labels,
                         cascade_gmacs=cascade_gmacs, saving=1.0 - cascade_gmacs / target_gmacs,
                         images_per_s=rate, throughput=origin, cached=name in cached,
                         gpu_hours=0.0 if name in cached else images / rate / 3600)

    head = priced(target, "target", answers[0] if answers else None)
    kept, left_out, used, listed = [head], [], head.gpu_hours, {target}
    for outcome in cascades:
        new = [priced(m, "answer" if m in answer_models else "companion", outcome)
               for m in dict.fromkeys(m for stage in outcome.cascade.stages for m in stage) if m not in listed]
        listed.update(model.name for model in new)
        cost = sum(model.gpu_hours for model in new)
        if limit is None or used + cost <= limit:
            kept.extend(new)
            used += cost
        else:
            left_out.extend(new)
    simulated = source.simulated
    notes = [f"ranked on the {'simulated ' if simulated else ''}search: the answer of each search first, then the "
             "cheapest feasible cascade of each other family on the selection images; cascade GMACs are held-out"]
    return CachingPlan(target=target, max_drop=max_drop, images=images, gpu_hours_limit=limit, models=kept,
                       left_out=left_out, searches=searches, simulated=simulated, notes=notes)
