"""How a cascade did: one record (stages, thresholds, calibration and test figures, interval) for every output.

The same :class:`Outcome` is stored with each trial, ranked by the search, read back by the trace and printed
by the table, JSON, report and notebook. Thresholds are chosen on calibration images; ``test`` holds the
figures on held-out images (None when the search ran in-sample, with no test part).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

from saver_search.cascade.evaluate import CascadeSpec
from saver_search.cascade.guarantee import Interval


@dataclass(frozen=True)
class Figures:
    """A cascade on one set of images. Top-1, drop below the target on the same images, compute saved, the share
    answered before the target and the share answered by each stage are fractions in [0, 1]
    (:mod:`saver_search.units`: tables print them in percent); GMACs and optional ms per image."""

    images: int
    accuracy: float
    drop: float
    gmacs: float
    reduction: float
    exit_ratio: float
    latency_ms: float | None = None
    stage_shares: list[float] | None = None

    def shares(self, n_stages: int) -> list[float]:
        """The share of images each of ``n_stages`` stages answers."""
        if self.stage_shares is not None:
            return list(self.stage_shares)
        return [1.0] if n_stages == 1 else [self.exit_ratio, 1.0 - self.exit_ratio]


@dataclass(frozen=True)
class Outcome:
    """One cascade and how it did. Its stages run first .. target; a single stage is the target alone.

    ``feasible``: the thresholds keep the budget, certified at the study's guarantee level on the
    calibration images (or, without a guarantee, the calibration drop is within the budget).
    """

    cascade: CascadeSpec
    calibration: Figures
    test: Figures | None
    interval: Interval | None
    feasible: bool
    trial: int | None = None

    @property
    def labels(self) -> list[str]:
        """The stages as people read them, first .. target ("a + b" for a committee); ``cascade.stages`` holds
        their member tuples."""
        return self.cascade.labels

    @property
    def thresholds(self) -> list[float]:
        """The threshold of every stage but the last, in the units of the cascade's score."""
        return list(self.cascade.thresholds)

    @property
    def first(self) -> str:
        """The first stage (the target itself when the target is served alone)."""
        return self.labels[0]

    @property
    def target_alone(self) -> bool:
        return len(self.labels) == 1

    @property
    def reported(self) -> Figures:
        """The figures to report: held-out test figures when there is a test part, else calibration."""
        return self.test if self.test is not None else self.calibration

    def to_attrs(self) -> dict[str, Any]:
        """A JSON-ready dict, stored with the trial (``trial`` is not stored: it is the trial's number)."""
        data = asdict(self)
        del data["trial"]
        data["cascade"] = self.cascade.to_dict()
        return data

    @classmethod
    def from_attrs(cls, data: dict[str, Any], trial: int | None = None) -> "Outcome":
        """Inverse of :meth:`to_attrs`."""
        interval = data.get("interval")
        return cls(
            cascade=CascadeSpec.from_dict(data["cascade"]),
            calibration=Figures(**data["calibration"]),
            test=None if data.get("test") is None else Figures(**data["test"]),
            interval=None if interval is None else Interval(
                level=interval["level"], drop=tuple(interval["drop"]), gmacs=tuple(interval["gmacs"])),
            feasible=bool(data["feasible"]), trial=trial,
        )


def rank_outcomes(outcomes: Iterable[Outcome], by_latency: bool = False) -> list[Outcome]:
    """The cheapest feasible outcome of each set of stages (each first stage, for pairs), cheapest first (ties: more
    accurate first).

    Ranks by calibration figures only (GMACs, or expected latency with ``by_latency``), so the choice never
    sees test images; serves the search summary and the reports, so both name the same best cascade.
    """
    def cost(outcome: Outcome) -> float:
        value = outcome.calibration.latency_ms if by_latency else outcome.calibration.gmacs
        return float("inf") if value is None else value

    best: dict[str, Outcome] = {}
    for outcome in sorted((o for o in outcomes if o.feasible), key=lambda o: (cost(o), -o.calibration.accuracy)):
        best.setdefault(" -> ".join(outcome.labels), outcome)
    return list(best.values())


@dataclass(frozen=True)
class TargetInfo:
    """The target served alone: top-1 (a fraction) on the calibration and test images, GMACs, optional ms/image."""

    name: str
    gmacs: float
    accuracy: float
    test_accuracy: float | None
    latency_ms: float | None = None

    @property
    def reported_accuracy(self) -> float:
        return self.accuracy if self.test_accuracy is None else self.test_accuracy


@dataclass(frozen=True)
class GuaranteeInfo:
    """The promise: true drop within the budget with probability >= ``level``; ``tests``: how many candidates (pairs)
    or cascades (a cascade search) it covers."""

    level: float
    bound: str
    tests: int
    covers: str = "candidates"
