"""What one stage of a cascade answers (pure NumPy): a single model, or a committee averaging its members.

A committee answers with the mean of its members' probabilities. From stored top-k predictions the mean is taken
over the union of the classes the members listed; a class a member did not list gets that member's unlisted mass
spread evenly over its unlisted classes (which is at most its k-th probability), so the merged top-k is exact for
every class all members listed and approximate otherwise. With every member's logits the mean is exact.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from saver_search.cascade.evaluate import StageOutputs
from saver_search.cascade.scores import Score, softmax
from saver_search.predictions.store import ModelPredictions


def _unlisted(model: ModelPredictions, n_classes: int) -> tuple[np.ndarray, int]:
    """A model's probability mass outside its top-k, and how many classes share it."""
    probs = np.asarray(model.probs, dtype=np.float64)
    return np.clip(1.0 - probs.sum(axis=0), 0.0, 1.0), max(n_classes - probs.shape[0], 0)


def merged_topk(members: Sequence[ModelPredictions], n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The members' mean distribution as listed classes and probabilities (descending), the mass of the unlisted
    classes and how many they are, per image: ``classes (u, n)``, ``probs (u, n)``, ``rest (n,)``, ``n_unlisted (n,)``.
    A class listed twice keeps one slot (the other gets probability 0 and class -1)."""
    if len(members) == 1:
        model = members[0]
        rest, n_unlisted = _unlisted(model, n_classes)
        return (np.asarray(model.classes), np.asarray(model.probs, dtype=np.float64), rest,
                np.full(rest.shape, n_unlisted))
    classes = np.concatenate([np.asarray(m.classes) for m in members])  # (u, n) slots
    total = np.zeros(classes.shape, dtype=np.float64)
    for member in members:
        member_classes, member_probs = np.asarray(member.classes), np.asarray(member.probs, dtype=np.float64)
        rest, n_unlisted = _unlisted(member, n_classes)
        fill = rest / n_unlisted if n_unlisted else np.zeros_like(rest)
        listed = classes[:, None, :] == member_classes[None, :, :]  # (u, k, n)
        value = (listed * member_probs[None, :, :]).sum(axis=1)
        total += np.where(listed.any(axis=1), value, fill[None, :])
    mean = total / len(members)
    earlier = np.tril(np.ones((classes.shape[0],) * 2, dtype=bool), k=-1)  # slot u vs the slots before it
    repeated = ((classes[:, None, :] == classes[None, :, :]) & earlier[:, :, None]).any(axis=1)
    mean[repeated] = 0.0
    classes = np.where(repeated, -1, classes)
    order = np.argsort(-mean, axis=0, kind="stable")
    probs = np.take_along_axis(mean, order, axis=0)
    unique = (~repeated).sum(axis=0)
    return (np.take_along_axis(classes, order, axis=0), probs, np.clip(1.0 - probs.sum(axis=0), 0.0, 1.0),
            np.maximum(n_classes - unique, 0))


def stage_outputs(members: Sequence[ModelPredictions], score: Score, n_classes: int, gmacs: float,
                  logits: Sequence[np.ndarray] | None = None, temperatures: Sequence[float] | None = None,
                  chunk: int = 4096) -> StageOutputs:
    """A stage's answers and oriented scores on the images ``members`` cover, costing ``gmacs`` (its own cost).

    With ``logits`` (one ``(n, classes)`` array per member, each divided by its temperature) the mean distribution
    is exact; otherwise it is merged from the members' top-k (:func:`merged_topk`)."""
    if logits is None:
        classes, probs, rest, n_unlisted = merged_topk(members, n_classes)
        return StageOutputs(predicted=classes[0], confidence=score.oriented(score.compute(probs, rest, n_unlisted)),
                            gmacs=gmacs)
    temperatures = temperatures or [1.0] * len(logits)
    n = logits[0].shape[0]
    predicted = np.empty(n, dtype=np.int64)
    values = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        mean = sum(softmax(z[part], t) for z, t in zip(logits, temperatures)) / len(logits)
        predicted[part] = mean.argmax(axis=1)
        values[part] = score.of_distribution(mean)
    return StageOutputs(predicted=predicted, confidence=score.oriented(values), gmacs=gmacs)
