"""A variant's accuracy and fidelity: two numbers, never confused, computed in one place.

*Accuracy* is absolute, on the task's metric: ``top1`` (or ``1-rel-error`` for a regression) measured on the
registration's labelled validation rows held out from calibration, or, without labels, **estimated** from the
owner's declared accuracy and the variant's measured disagreement with the original model. With neither labels
nor a declared accuracy it is unknown, and the variant only satisfies a ``min_accuracy`` of 0.

*Fidelity* is how faithfully a variant reproduces the registered model's own outputs: ``agreement`` of argmax for
classifiers, ``cosine`` for vector outputs (embeddings), ``1-rel-error`` for the rest; the original has 1.0. It
serves ``min_fidelity``, for owners without labels. Agreement with the original is never reported as accuracy:
before this module an unlabelled model scored 1.0 on its FP32 variant, so a model declared at 0.60 was chosen for
``min_accuracy=0.9`` over a labelled 0.92 one (issue 12).

The selector (``Candidate.of``), offline jobs, the API, the CLI and the console all ask ``accuracy_of``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from infaas.catalog import ModelInfo, VariantInfo

TOP1 = "top1"
REL_ERROR = "1-rel-error"
AGREEMENT = "agreement"
COSINE = "cosine"
DECLARED = "declared"  # the owner's own metric for a non-classifier: we cannot tell what it measures
SYNTHETIC = "-synthetic"  # suffix: measured on random inputs, not on the owner's data

# The graph-optimised FP32 build of the upload (ONNX Runtime's exact rewrites): the registered model itself.
ORIGINAL_KINDS = frozenset({"cpu-fp32"})

Source = Literal["measured", "estimated", "declared", "unknown"]


@dataclass(frozen=True)
class Accuracy:
    """A variant's accuracy: ``value`` in ``metric``, and where it comes from.

    ``source``: ``measured`` on held-out labelled rows; ``declared`` (the owner's figure, on the original);
    ``estimated`` (declared lowered by the variant's disagreement with the original); ``unknown``.
    """

    value: float | None
    metric: str | None
    source: Source

    def reaches(self, floor: float, metric: str | None) -> bool:
        """Whether it satisfies ``floor`` read in ``metric``: an unknown or other-metric accuracy only meets 0."""
        if floor <= 0:
            return True
        return self.value is not None and self.metric == metric and self.value >= floor


UNKNOWN = Accuracy(None, None, "unknown")


@dataclass(frozen=True)
class Fidelity:
    """Agreement (classifiers), cosine (vectors) or 1 - relative error with the original model's outputs."""

    value: float | None
    metric: str | None

    def reaches(self, floor: float) -> bool:
        """An unknown fidelity only satisfies a floor of 0."""
        return floor <= 0 or (self.value is not None and self.value >= floor)


def is_classification(task: str) -> bool:
    """Whether a task's outputs are class scores (argmax agreement is meaningful) rather than vectors."""
    return "classif" in task.lower()


def fidelity_of(variant: VariantInfo) -> Fidelity:
    """The variant's measured fidelity (the same at every batch size); the original's is 1.0 by definition.

    A variant without profiles (not built, skipped, failed) has none.
    """
    if not variant.profiles:
        return Fidelity(None, None)
    measured = next((p for p in variant.profiles if p.fidelity is not None), None)
    metric = measured.fidelity_metric if measured is not None else None
    if variant.kind in ORIGINAL_KINDS:
        return Fidelity(1.0, metric)
    return Fidelity(measured.fidelity, metric) if measured is not None else Fidelity(None, None)


def _base(metric: str | None) -> str | None:
    return metric.removesuffix(SYNTHETIC) if metric else metric


def accuracy_of(model: ModelInfo, variant: VariantInfo) -> Accuracy:
    """The variant's accuracy: measured, else estimated from the declared accuracy, else unknown.

    Without labels, a classifier's estimate is ``declared - (1 - agreement)``, clipped at 0. It is a lower bound
    on the variant's top-1 on the data the owner declared on: the variant is wrong only where the original is
    wrong or the two disagree, so P(variant wrong) <= P(original wrong) + P(disagree) = (1 - declared) + (1 -
    agreement). It is as good as the agreement is representative of that data (measured on the validation
    inputs; on synthetic inputs when none were registered, whose metric says so).

    For other outputs (embeddings: cosine; scalars: 1 - relative error) the declared figure is in the owner's
    own metric (``declared``), which a cosine does not bound; the estimate is ``declared - (1 - fidelity)``,
    chosen over ``declared x fidelity`` because it is never higher (the two differ by
    ``(1 - declared)(1 - fidelity) >= 0``): the conservative of the two.

    The original variant (``ORIGINAL_KINDS``) gets exactly the declared value, marked ``declared``. A variant
    without profiles (not built, skipped, failed) has no accuracy.
    """
    if not variant.profiles:
        return UNKNOWN
    measured = next((p for p in variant.profiles if p.accuracy is not None), None)
    if measured is not None:
        return Accuracy(measured.accuracy, measured.accuracy_metric, "measured")
    declared = model.declared_accuracy
    if declared is None:
        return UNKNOWN
    fidelity = fidelity_of(variant)
    classifier = _base(fidelity.metric) == AGREEMENT or (fidelity.metric is None and is_classification(model.task))
    metric = TOP1 if classifier else DECLARED
    if variant.kind in ORIGINAL_KINDS:
        return Accuracy(declared, metric, "declared")
    if fidelity.value is None:
        return UNKNOWN
    return Accuracy(max(0.0, declared - (1.0 - fidelity.value)), metric, "estimated")


def floor_metric(accuracies: Iterable[tuple[str, Accuracy]]) -> str | None:
    """The metric a query's ``min_accuracy`` is read in, over ``(model name, accuracy)`` of its candidates.

    Only like is compared with like: measured and estimated top-1 are both "top-1 accuracy"; a regression's
    ``1-rel-error`` or an owner's ``declared`` metric is not, so a task mixing them reads a floor in the metric
    most of its models have (counting models, not variants; a tie goes to ``top1``, then by name). Candidates
    in another metric then only meet a floor of 0. ``None`` when no accuracy is known.
    """
    per_model: dict[str, str] = {}
    for model_name, accuracy in accuracies:
        if accuracy.metric is not None and accuracy.value is not None:
            per_model.setdefault(model_name, accuracy.metric)
    if not per_model:
        return None
    counts = Counter(per_model.values())
    return min(counts, key=lambda m: (-counts[m], m != TOP1, m))
