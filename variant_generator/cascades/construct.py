"""Build a task's cascades: every candidate pair decided and recorded, the kept ones stored as virtual variants.

Runs as the background task ``build_cascades`` (``infaas.jobs.tasks``), submitted when a model's variant build
ends ready (``variant_generator.build``): so it runs after a task's first build and again whenever a model is
added to the task or rebuilt. For each model of the task with a labelled validation set (the *expensive*
side's registration is the data: its labels are the ones its accuracy is measured on):

1. its scoring rows (held out from INT8 calibration) are split into tune and report rows (``sweep.tune_report``);
2. every eligible variant of every compatible model (``candidates``) is run once on those rows, in a child
   within the build limits (it runs the tenant's models, as a build does);
3. for every (cheap, expensive) pair whose cheap member costs less, the threshold is swept on the tune rows
   (``sweep.sweep``: bootstrap test, cheapest accepted); a pair whose best threshold saves less than
   ``cost.MIN_SAVING`` is not kept; per expensive variant the cheapest passing pair is kept (one cascade each);
4. the chosen threshold must not be significantly less accurate than the expensive variant on the report rows
   (``_confirmed``);
5. a kept cascade's accuracy is measured on the report rows (with the bootstrap interval of its difference from
   the expensive member's), its bundle written (``infaas.cascade_session``) and profiled by the profiler like
   any variant, on the report rows, and recorded as variant ``cascade-<expensive variant>`` of the expensive
   member's model.

Every pair considered is a ``cascade_decisions`` row (kept or not, why, with the numbers); a cascade no longer
kept is marked ``skipped`` with why and its bundle removed.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infaas.accuracy import TOP1
from infaas.cascade_session import CASCADE, KIND, CascadeSpec, Member, confidence, read_spec, write_bundle
from infaas.catalog import CascadeDecisionInfo, ModelInfo, VariantInfo
from infaas.db.models import ModelStatus, VariantStatus
from infaas.runtime import open_session
from infaas.sandbox import run_limited
from infaas.scratch import scratch_dir
from infaas.services import Services
from variant_generator.accuracy import ValidationSet, accuracy_score
from variant_generator.build import Measurement
from variant_generator.cascades import sweep
from variant_generator.cascades.candidates import compatible, eligible, score_index
from variant_generator.cascades.cost import MIN_SAVING, CostModel
from variant_generator.profiler import profile_variant

log = logging.getLogger(__name__)
PREDICT_BATCH = 64


def cascade_name(expensive: VariantInfo) -> str:
    """The kept cascade's variant name on the expensive member's model: one cascade per expensive variant."""
    return f"{KIND}-{expensive.name}"


def member_outputs(
    members: Sequence[tuple[Path, tuple[str, ...], int]], model: ModelInfo, data: ValidationSet
) -> list[list[np.ndarray] | str]:
    """Every output of each member on every row of ``data`` (run in a child), or why it could not run."""
    results: list[list[np.ndarray] | str] = []
    for path, providers, threads in members:
        try:
            session = open_session(path, providers, threads, shapes=model.input_shapes)
            parts: list[list[np.ndarray]] = []
            for start in range(0, data.rows, PREDICT_BATCH):
                size = min(PREDICT_BATCH, data.rows - start)
                parts.append([np.asarray(o) for o in session.run(None, data.batch(size, start))])
            results.append([np.concatenate(chunk) for chunk in zip(*parts, strict=True)])
        except Exception as exc:  # one member that fails here is not a candidate; the others still are
            results.append(f"{type(exc).__name__}: {exc}")
    return results


def _correct(first_output: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """Per-row top-1 correctness of a first output, or ``None`` when its metric is not top-1."""
    _, metric = accuracy_score(first_output, labels)
    if metric != TOP1:
        return None
    predicted = first_output.argmax(axis=1) if first_output.ndim == 2 else first_output.reshape(-1)
    target = labels.argmax(axis=1) if labels.ndim == 2 else labels.reshape(-1)
    return predicted == target


@dataclass(frozen=True)
class _Member:
    model: ModelInfo
    variant: VariantInfo
    outputs: list[np.ndarray]
    correct: np.ndarray


@dataclass
class _Candidate:
    cheap: _Member
    expensive: _Member
    choice: sweep.Choice
    score: int
    savings: dict[int, float]


def _decision(
    task: str, owner: str, cheap: str, expensive: str, reason: str, numbers: dict[str, Any] | None = None
) -> CascadeDecisionInfo:
    return CascadeDecisionInfo(task, owner, cheap, expensive, False, reason, numbers or {})


class _Construction:
    """One expensive model's cascades: the data, its members' outputs, the decisions."""

    def __init__(self, services: Services, model: ModelInfo, models: Sequence[ModelInfo]) -> None:
        self.services, self.model, self.settings = services, model, services.settings
        self.measurement = Measurement(services, model, services.store.local_path(model.artifact_key))
        self.decisions: list[CascadeDecisionInfo] = []
        self.partners = [m for m in models if m.name == model.name or compatible(m, model) is None]

    def _record(self, cheap: str, expensive: str, reason: str, numbers: dict[str, Any] | None = None) -> None:
        self.decisions.append(_decision(self.model.task, self.model.owner, cheap, expensive, reason, numbers))

    def run(self) -> list[str]:
        """Decide every pair with this model's variants as the expensive member; returns the kept variant names."""
        validation = self.measurement.validation
        if validation is None or validation.labels is None:
            self._record(
                "*", f"{self.model.name}/*", "no labelled validation set: a cascade's accuracy cannot be tested"
            )
            return []
        data = self.measurement.data
        tune, report = sweep.tune_report(data.rows)
        members = self._members(data)
        expensive = [m for m in members if m.model.name == self.model.name]
        kept: list[str] = []
        for big in expensive:
            best = self._best_for(big, members, tune)
            if best is None or not self._confirmed(best, report):
                continue
            try:
                kept.append(self._keep(best, data, tune, report))
            except Exception as exc:  # recorded on the variant and the decision; the other cascades still build
                log.exception("cascade of %s failed", big.variant.key)
                why = f"passes, but building it failed: {type(exc).__name__}: {exc}"[:2000]
                self.decisions = [
                    _replace_reason(d, why) if d.expensive == big.variant.key and d.reason == "kept" else d
                    for d in self.decisions
                ]
                name = cascade_name(big.variant)
                if any(
                    v.name == name for v in (self.services.metadata.get_model(self.model.name) or self.model).variants
                ):
                    self.services.metadata.replace_profiles(self.model.name, name, [])
                    self.services.metadata.set_variant_status(self.model.name, name, VariantStatus.FAILED, reason=why)
        return kept

    def _members(self, data: ValidationSet) -> list[_Member]:
        variants = [(m, v) for m in self.partners for v in m.variants if eligible(v)]
        store = self.services.store
        outputs = run_limited(
            member_outputs,
            [(store.local_path(v.artifact_key or ""), v.providers, v.threads) for _, v in variants],
            self.model,
            data,
            limits=self.measurement.limits,
            what=f"running the candidate members of {self.model.name}'s cascades on its validation rows",
        )
        assert data.labels is not None
        members = []
        for (model, variant), out in zip(variants, outputs, strict=True):
            if isinstance(out, str):
                self._record(variant.key, f"{self.model.name}/*", f"could not run on the validation rows: {out}")
                continue
            correct = _correct(out[0], data.labels)
            if correct is None:
                self._record(variant.key, f"{self.model.name}/*", "its first output is not scored top-1: no cascade")
                continue
            members.append(_Member(model, variant, out, correct))
        return members

    def _best_for(self, big: _Member, members: Sequence[_Member], tune: np.ndarray) -> _Candidate | None:
        cores, prices = self.settings.worker_cores, self.settings.prices
        tolerance = self.settings.cascade_tolerance
        passing: list[_Candidate] = []
        for small in members:
            if small.variant.key == big.variant.key:
                continue
            cost = CostModel(small.variant, big.variant, cores, prices)
            alone = sum(cost.cheap(b) / cost.expensive(b) for b in cost.batches) / len(cost.batches)
            if alone >= 1.0:
                continue  # not cheaper: the other order is the candidate (pairs are ordered by cost)
            key, big_key = small.variant.key, big.variant.key
            numbers: dict[str, Any] = {"cheap_relative_cost": round(alone, 4)}
            if alone > 1.0 - MIN_SAVING:
                self._record(
                    key, big_key, f"cannot save {MIN_SAVING:.0%}: the cheap member alone costs {alone:.0%}", numbers
                )
                continue
            index = score_index(small.model.outputs)
            scores = small.outputs[index] if index is not None else None
            if scores is None or scores.ndim != 2 or scores.shape[1] < 2:
                self._record(key, big_key, "no multi-class score output: no usable confidence", numbers)
                continue
            small_acc, big_acc = float(small.correct[tune].mean()), float(big.correct[tune].mean())
            numbers |= {"cheap_accuracy_tune": round(small_acc, 4), "expensive_accuracy_tune": round(big_acc, 4)}
            if small_acc >= big_acc:
                self._record(
                    key, big_key, "the cheap member alone is as accurate on the tune rows: no cascade needed", numbers
                )
                continue
            choice, tried = sweep.sweep(scores[tune], small.correct[tune], big.correct[tune], cost.relative, tolerance)
            numbers["thresholds_tried"] = tried
            if choice is None:
                why = f"no threshold keeps {sweep.REQUIRED} of {sweep.RESAMPLES} bootstrap resamples within"
                self._record(key, big_key, f"{why} {tolerance * 100:.2g} points of the expensive member", numbers)
                continue
            numbers |= _choice_numbers(choice)
            saving = 1.0 - choice.relative_cost
            if saving < MIN_SAVING:
                self._record(key, big_key, f"saves {saving:.1%} (< {MIN_SAVING:.0%}) at its best threshold", numbers)
                continue
            passing.append(_Candidate(small, big, choice, index or 0, cost.savings(choice.answered)))
            self._record(key, big_key, "passes", numbers)
        if not passing:
            return None
        best = min(passing, key=lambda c: (c.choice.relative_cost, c.cheap.variant.key))
        for decision_index, decision in enumerate(self.decisions):
            if decision.expensive == big.variant.key and decision.reason == "passes":
                reason = (
                    "kept"
                    if decision.cheap == best.cheap.variant.key
                    else f"passes, not kept: {best.cheap.variant.key} as the cheap stage costs less"
                )
                self.decisions[decision_index] = _replace_reason(decision, reason)
        return best

    def _confirmed(self, best: _Candidate, report: np.ndarray) -> bool:
        """Whether the chosen threshold is not significantly less accurate on the report rows (``sweep.confirmed``).

        A failure is recorded and that expensive variant gets no cascade: trying the next candidate would be
        tuning on the report rows, which then report its accuracy.
        """
        small, big = best.cheap, best.expensive
        conf = confidence(small.outputs[best.score][report], best.choice.rule, best.choice.scores)
        if sweep.confirmed(conf, best.choice, small.correct[report], big.correct[report]):
            return True
        low, high = sweep.interval(
            sweep.difference(conf >= best.choice.threshold, small.correct[report], big.correct[report])
        )
        why = (
            "not kept: its threshold is significantly less accurate than the expensive variant on the held-out "
            f"report rows (difference 95% interval [{low * 100:+.2f}, {high * 100:+.2f}] points): the tune rows "
            "flattered it"
        )
        self.decisions = [
            _replace_reason(d, why) if d.expensive == big.variant.key and d.reason == "kept" else d
            for d in self.decisions
        ]
        return False

    def _keep(self, best: _Candidate, data: ValidationSet, tune: np.ndarray, report: np.ndarray) -> str:
        """Measure ``best`` on the report rows, store and profile its bundle, record it; its variant name."""
        services, model, big, small = self.services, self.model, best.expensive, best.cheap
        name = cascade_name(big.variant)
        conf = confidence(small.outputs[best.score][report], best.choice.rule, best.choice.scores)
        answered = conf >= best.choice.threshold
        correct = np.where(answered, small.correct[report], big.correct[report])
        diff = correct.astype(np.float64) - big.correct[report].astype(np.float64)
        low, high = sweep.interval(diff)
        tune_conf = confidence(small.outputs[best.score][tune], best.choice.rule, best.choice.scores)
        escalated = (~(tune_conf >= best.choice.threshold)).astype(np.float64)
        numbers = _choice_numbers(best.choice) | {
            "escalation_share": round(float(escalated.mean()), 4),
            "escalation_interval": [round(v, 4) for v in sweep.interval(escalated)],  # what drift is checked against
            "report_rows": int(len(report)),
            "tune_rows": int(len(tune)),
            "accuracy": round(float(correct.mean()), 4),
            "expensive_accuracy": round(float(big.correct[report].mean()), 4),
            "accuracy_difference_interval": [round(low, 4), round(high, 4)],
            "answered_report": round(float(answered.mean()), 4),
            "saving_by_batch": {str(b): round(s, 4) for b, s in best.savings.items()},
        }
        threads = (
            0 if 0 in (small.variant.threads, big.variant.threads) else max(small.variant.threads, big.variant.threads)
        )
        spec = CascadeSpec(
            cheap=Member(small.variant.key, small.variant.providers, small.variant.threads, "cheap.onnx"),
            expensive=Member(big.variant.key, big.variant.providers, big.variant.threads, "expensive.onnx"),
            rule=best.choice.rule,
            threshold=best.choice.threshold,
            score_index=best.score,
            scores=best.choice.scores,
        )
        reason = (
            f"cascade {small.variant.key} -> {big.variant.key}: {spec.rule} >= {spec.threshold:.4g}, cheap stage "
            f"answers {best.choice.answered:.0%} (tune rows), expected cost {best.choice.relative_cost:.0%} of the "
            f"expensive member; accuracy {numbers['accuracy']:.4f} vs {numbers['expensive_accuracy']:.4f} on "
            f"{len(report)} report rows (difference 95% interval [{low * 100:+.2f}, {high * 100:+.2f}] points)"
        )
        metadata, store = services.metadata, services.store
        precision = f"{small.variant.precision}+{big.variant.precision}"[:16]
        metadata.upsert_variant(
            model.name,
            name,
            kind=KIND,
            precision=precision,
            hardware="cpu",
            threads=threads,
            providers=(CASCADE,),
            status=VariantStatus.BUILDING,
        )
        key = f"models/{model.name}/variants/{name}.zip"
        reference = self.measurement.reference
        with tempfile.TemporaryDirectory(dir=scratch_dir(self.settings), prefix="cascade-") as tmp:
            bundle = write_bundle(
                Path(tmp) / f"{name}.zip",
                spec,
                store.local_path(small.variant.artifact_key or ""),
                store.local_path(big.variant.artifact_key or ""),
            )
            profiles = run_limited(
                profile_variant,
                bundle,
                model,
                providers=(CASCADE,),
                threads=threads,
                settings=self.settings,
                data=data.take(report),
                reference=None if reference is None else reference[report],
                limits=self.measurement.limits,
                what=f"profiling cascade {name} of {model.name}",
            )
            store.put_file(key, bundle)
        metadata.replace_profiles(model.name, name, profiles)
        metadata.set_variant_status(model.name, name, VariantStatus.READY, reason=reason, artifact_key=key)
        for index, decision in enumerate(self.decisions):
            if (
                decision.expensive == big.variant.key
                and decision.cheap == small.variant.key
                and decision.reason == "kept"
            ):
                self.decisions[index] = CascadeDecisionInfo(
                    decision.task,
                    decision.owner,
                    decision.cheap,
                    decision.expensive,
                    True,
                    reason,
                    decision.numbers | numbers,
                    variant=f"{model.name}/{name}",
                )
        return name


def _choice_numbers(choice: sweep.Choice) -> dict[str, Any]:
    return {
        "rule": choice.rule,
        "scores": choice.scores,
        "threshold": round(choice.threshold, 6),
        "answered": round(choice.answered, 4),
        "relative_cost": round(choice.relative_cost, 4),
        "saving": round(1.0 - choice.relative_cost, 4),
        "bootstrap_within": choice.within,
        "accuracy_tune": round(choice.accuracy, 4),
    }


def _replace_reason(decision: CascadeDecisionInfo, reason: str) -> CascadeDecisionInfo:
    return CascadeDecisionInfo(
        decision.task, decision.owner, decision.cheap, decision.expensive, False, reason, decision.numbers
    )


def _retire(services: Services, models: Sequence[ModelInfo], kept: set[str]) -> None:
    """Mark cascades the construction no longer keeps ``skipped`` (with why) and remove their bundles."""
    for model in models:
        for variant in model.variants:
            if variant.kind != KIND or variant.key in kept or variant.status == VariantStatus.SKIPPED:
                continue
            services.metadata.replace_profiles(model.name, variant.name, [])
            services.metadata.set_variant_status(
                model.name,
                variant.name,
                VariantStatus.SKIPPED,
                reason=f"no longer kept by the task's cascade construction (GET /v1/tasks/{model.task}/cascades)",
            )
            if variant.artifact_key:
                services.store.delete_prefix(variant.artifact_key)


def build_task_cascades(services: Services, task: str, owner: str) -> None:
    """Decide, build and record every cascade of ``task`` among ``owner``'s ready models (background task)."""
    models = [
        m
        for m in services.metadata.list_models()
        if m.task == task and m.owner == owner and m.status == ModelStatus.READY
    ]
    decisions: list[CascadeDecisionInfo] = []
    kept: set[str] = set()
    for model in models:
        if not any(eligible(v) for v in model.variants):
            continue
        construction = _Construction(services, model, models)
        try:
            kept |= {f"{model.name}/{name}" for name in construction.run()}
        except Exception as exc:  # one model's data failing must not stop the task's other cascades
            log.exception("cascades of %s failed", model.name)
            construction.decisions.append(
                _decision(task, owner, "*", f"{model.name}/*", f"construction failed: {type(exc).__name__}: {exc}")
            )
        decisions.extend(construction.decisions)
    _retire(services, models, kept)
    services.metadata.replace_cascade_decisions(task, owner, decisions)
    log.info(
        "cascades of task %s (%s): %d kept of %d decisions",
        task,
        owner,
        len(kept),
        len(decisions),
        extra={"event": "cascades", "task": task, "kept": sorted(kept)},
    )


def recalibrate_cascade(services: Services, model_name: str, variant_name: str) -> None:
    """Background task for a ``stale`` cascade (``infaas.cascade_drift``): decide the task's cascades again on the
    stored validation set. A cascade that comes back with another threshold (or members) replaces the stale one;
    one that comes back the same stays ``stale``, since the same rows can only give the same answer: its reason
    says to register validation rows like the live traffic. Either way a ``recalibrated`` decision is recorded."""
    model = services.metadata.get_model(model_name)
    variant = next((v for v in model.variants if v.name == variant_name), None) if model else None
    if model is None or variant is None or variant.status != VariantStatus.STALE or not variant.artifact_key:
        return
    before = read_spec(services.store.local_path(variant.artifact_key))
    build_task_cascades(services, model.task, model.owner)
    model = services.metadata.get_model(model_name)
    after = next((v for v in model.variants if v.name == variant_name), None) if model else None
    if model is None or after is None:
        return
    key = f"{model_name}/{variant_name}"
    numbers = {"threshold_before": before.threshold}
    if after.status == VariantStatus.READY and after.artifact_key:
        spec = read_spec(services.store.local_path(after.artifact_key))
        numbers["threshold_after"] = spec.threshold
        if spec == before:
            reason = (
                f"recalibrated on the stored validation set: the same threshold ({spec.threshold:.4g}), so it stays "
                "stale; register validation rows like the live traffic to change it"
            )
            services.metadata.set_variant_status(model_name, variant_name, VariantStatus.STALE, reason=reason)
        else:
            reason = f"recalibrated: threshold {before.threshold:.4g} -> {spec.threshold:.4g} ({spec.cheap.key} first)"
    else:
        reason = f"recalibrated: no longer kept ({after.reason})"
    services.metadata.add_cascade_decision(
        CascadeDecisionInfo(
            model.task,
            model.owner,
            before.cheap.key,
            before.expensive.key,
            False,
            reason,
            numbers,
            variant=key,
            kind="recalibrated",
        )
    )
