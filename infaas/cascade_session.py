"""A cascade served like any variant: a cheap stage answers the rows it is confident about, the rest escalate.

A kept cascade (built by ``variant_generator.cascades``) is a *virtual variant*: a variant row of kind
``cascade`` whose artifact is a bundle -- a zip holding ``cascade.json`` (members, threshold, confidence rule)
and both members' ONNX files -- opened by the one artifact loader (``infaas.runtime.open_session``) when the
variant's providers are ``(CASCADE,)``. So the profiler measures its latency and throughput by running it, with
the real split of rows, and a worker serves it exactly as it serves any variant.

The bundle carries the members' files rather than their store keys: a remote worker fetches one key from the
store (S3 included), and a member rebuilt later cannot silently change the model a threshold was tuned on.
The price is storage (the members' bytes twice); the zoo's largest pair, digits-cnn with digits-mlp-large, is
about 20 MB.

``run``: the cheap stage runs on the whole batch; rows whose confidence is below the threshold are gathered
into one batch for the expensive stage; outputs are merged in row order, so the answer has the expensive
model's outputs, names, dtypes and shapes -- plus ``STAGE_OUTPUT`` (int8 per row, 0 cheap, 1 expensive),
which the engine removes from the answer and reports in ``served_by`` (an offline job's result keeps it).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

CASCADE = "Cascade"  # the "provider" of a cascade variant: ``open_session`` opens it as a ``CascadeSession``
KIND = "cascade"  # its variant kind
STAGE_OUTPUT = "cascade_stage"  # extra output: which stage answered each row (0 cheap, 1 expensive)
SPEC_FILE = "cascade.json"
FORMAT = 1

Rule = Literal["max_prob", "margin"]
RULES: tuple[Rule, ...] = ("max_prob", "margin")
Scores = Literal["logits", "probabilities"]
_SUM_TOLERANCE = 1e-3  # rows summing to 1 within this, all in [0, 1], are taken as probabilities already


def score_kind(scores: np.ndarray) -> Scores:
    """Whether ``[rows, classes]`` scores are ``probabilities`` already (every row a distribution: a scikit-learn
    ``probabilities`` output) or ``logits`` (softmax gives the probabilities). Decided once, when a cascade is
    built, from the cheap member's scores on the validation rows; ``confidence`` then costs 1-4 numpy calls."""
    values = np.asarray(scores, dtype=np.float64)
    if values.size and values.min() >= 0.0 and values.max() <= 1.0:
        if np.all(np.abs(values.sum(axis=1) - 1.0) <= _SUM_TOLERANCE):
            return "probabilities"
    return "logits"


def probabilities(scores: np.ndarray, kind: Scores) -> np.ndarray:
    """Class probabilities of ``[rows, classes]`` scores of ``kind``."""
    if kind == "probabilities":
        return np.asarray(scores)
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def confidence(scores: np.ndarray, rule: Rule, kind: Scores) -> np.ndarray:
    """Per-row confidence of multi-class scores: ``max_prob`` (the top probability) or ``margin`` (top-1 minus
    top-2 probability). Both are in [0, 1] for any number of classes (not only binary); NaN scores give NaN,
    which is below every threshold, so such a row escalates.

    From logits without forming every probability: the top one is ``1 / sum(exp(s - max))`` and the margin
    ``(1 - exp(second - max)) / sum(exp(s - max))``. The serving path pays this per batch: forming the softmax
    with checks cost 43 us per batch-1 call on the loaded 2-core build host, this form a fraction of it.
    """
    if kind == "probabilities":
        if rule == "max_prob":
            return scores.max(axis=1)
        top2 = np.partition(scores, -2, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]
    top = scores.max(axis=1, keepdims=True)
    total = np.exp(scores - top).sum(axis=1)
    if rule == "max_prob":
        return 1.0 / total
    second = np.partition(scores, -2, axis=1)[:, -2]
    return (1.0 - np.exp(second - top[:, 0])) / total


@dataclass(frozen=True)
class Member:
    """One stage: the variant it was (``model/variant``), how it runs, and its file inside the bundle."""

    key: str
    providers: tuple[str, ...]
    threads: int
    file: str


@dataclass(frozen=True)
class CascadeSpec:
    """What a bundle's ``cascade.json`` says: rows whose cheap confidence (``rule``) is at least ``threshold`` are
    answered by ``cheap``; ``score_index`` is the cheap output the confidence is read from, ``scores`` what it
    holds (``score_kind``)."""

    cheap: Member
    expensive: Member
    rule: Rule
    threshold: float
    score_index: int
    scores: Scores = "logits"

    def to_json(self) -> str:
        """The spec as stored in the bundle."""
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> CascadeSpec:
        """Read a bundle's spec; ``ValueError`` for another format or a bad rule."""
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"cascade spec format {data.get('format')!r} is not {FORMAT}")
        if data["rule"] not in RULES:
            raise ValueError(f"cascade rule {data['rule']!r} is not one of {', '.join(RULES)}")
        members = {k: Member(**{**data[k], "providers": tuple(data[k]["providers"])}) for k in ("cheap", "expensive")}
        return cls(
            cheap=members["cheap"],
            expensive=members["expensive"],
            rule=data["rule"],
            threshold=float(data["threshold"]),
            score_index=int(data["score_index"]),
            scores="probabilities" if data.get("scores") == "probabilities" else "logits",
        )


def write_bundle(path: Path, spec: CascadeSpec, cheap: Path, expensive: Path) -> Path:
    """Write the bundle at ``path``: the spec and both members' ONNX files (stored, not compressed: they are
    read once per load and ONNX weights barely compress)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as bundle:
        bundle.writestr(SPEC_FILE, spec.to_json())
        bundle.write(cheap, spec.cheap.file)
        bundle.write(expensive, spec.expensive.file)
    return path


def read_spec(path: Path) -> CascadeSpec:
    """The spec of the bundle at ``path``."""
    with zipfile.ZipFile(path) as bundle:
        return CascadeSpec.from_json(bundle.read(SPEC_FILE).decode())


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: Sequence[int | str | None]
    type: str


class _Runner(Protocol):
    """What a stage needs of a session: ``infaas.runtime.Session``'s shape (not imported: runtime imports us)."""

    def get_inputs(self) -> Sequence[Any]: ...

    def get_outputs(self) -> Sequence[Any]: ...

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray], /) -> list[np.ndarray]: ...


class CascadeSession:
    """Both stages of a cascade behind the ``Session`` shape (``get_inputs``, ``get_outputs``, ``run``).

    ``cheap`` and ``expensive`` are opened sessions; their inputs must be the same, and their outputs the same
    in number, with a batch axis first (checked when the cascade is built). ``infaas.runtime.open_session``
    opens them from a bundle, each with its own providers and threads. ``outputs`` are the expensive member's,
    plus ``STAGE_OUTPUT``.
    """

    def __init__(self, spec: CascadeSpec, cheap: _Runner, expensive: _Runner) -> None:
        self.spec = spec
        self._cheap, self._expensive = cheap, expensive
        self._inputs = list(expensive.get_inputs())
        outputs = list(expensive.get_outputs())
        self._names = [o.name for o in outputs]
        self._outputs = [*outputs, _Tensor(STAGE_OUTPUT, [outputs[0].shape[0] if outputs else "batch"], "tensor(int8)")]

    @property
    def members(self) -> tuple[_Runner, _Runner]:
        """The cheap and the expensive stage's sessions (a benchmark times the cascade's own work apart)."""
        return self._cheap, self._expensive

    def get_inputs(self) -> Sequence[Any]:
        """The expensive member's inputs (the same as the cheap one's)."""
        return self._inputs

    def get_outputs(self) -> Sequence[Any]:
        """The expensive member's outputs, then ``STAGE_OUTPUT``."""
        return self._outputs

    def stages(self, feeds: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """Every output of the cascade on ``feeds`` in the expensive member's order, and the per-row escalation
        mask (True: answered by the expensive stage).

        The cascade's own work is paid per batch: one ``flatnonzero`` decides none / all / some escalated, and
        ``run`` returns every output without a lookup by name; over members that return at once this took the
        cascade from 53 to 32 us per batch-1 call and from 84 to 74 us at batch 32 (2-core host at load 9).
        """
        cheap = self._cheap.run(None, feeds)
        spec = self.spec
        conf = confidence(cheap[spec.score_index], spec.rule, spec.scores)
        escalate = ~(conf >= spec.threshold)  # NaN confidence escalates
        rows = np.flatnonzero(escalate)  # one pass decides all three cases
        if not len(rows):
            return cheap, escalate
        if len(rows) == len(escalate):  # e.g. an escalated batch-1 query: no gather, no merge
            return self._expensive.run(None, feeds), escalate
        answered = self._expensive.run(None, {name: array[rows] for name, array in feeds.items()})
        return [_merge(out, big, rows) for out, big in zip(cheap, answered, strict=True)], escalate

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray], /) -> list[np.ndarray]:
        """The named outputs (every output for ``None``): merged in row order, the stage of each row last."""
        merged, escalate = self.stages(feeds)
        if not output_names:  # every output (what workers ask for): no lookup by name
            return [*merged, escalate.view(np.int8)]
        by_name = dict(zip(self._names, merged, strict=True))
        by_name[STAGE_OUTPUT] = escalate.view(np.int8)
        return [by_name[name] for name in output_names]


def _merge(cheap: np.ndarray, expensive: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``cheap`` with ``rows`` replaced by the expensive stage's answers, in the expensive stage's dtype."""
    if cheap.shape[1:] != expensive.shape[1:]:
        raise ValueError(f"cascade stages disagree on an output's shape: {cheap.shape} vs {expensive.shape}")
    out = cheap.astype(expensive.dtype, copy=False)
    out[rows] = expensive
    return out


def split_stages(outputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A cascade's answer without ``STAGE_OUTPUT``, and what ``served_by`` says of it: how many rows the expensive
    stage answered, their share, and each row's stage (``cheap`` or ``expensive``)."""
    answer = dict(outputs)
    stages = np.asarray(answer.pop(STAGE_OUTPUT)).reshape(-1)
    escalated = int(stages.sum())
    rows = len(stages)
    return answer, {
        "rows": rows,
        "escalated": escalated,
        "escalation_share": escalated / rows if rows else 0.0,
        "stages": ["expensive" if s else "cheap" for s in stages.tolist()],
    }


def read_bundle(path: Path) -> tuple[CascadeSpec, bytes, bytes]:
    """A bundle's spec and its cheap and expensive members' ONNX bytes (``infaas.runtime`` opens them)."""
    with zipfile.ZipFile(path) as bundle:
        spec = CascadeSpec.from_json(bundle.read(SPEC_FILE).decode())
        return spec, bundle.read(spec.cheap.file), bundle.read(spec.expensive.file)
