"""A seeded random workload over the HTTP API, and the ledger of what the server acknowledged.

The ledger is what the invariants are checked against: a registration answered 201 must exist, one whose
answer never came (the server died mid-request) may exist or not, but never half; likewise deletions.
Every offline job answered 202 must end ``done`` (or ``failed`` with a reason when its model was deleted
under it). Any answer a client should never see (a 500, a 503 without ``Retry-After``, a query result
that differs from ONNX Runtime's own) is recorded as a violation on the spot.
"""

from __future__ import annotations

import io
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from tests.factories import mlp_model, reference_outputs, write_validation

TASK = "crash-classification"
IN_DIM = 8
MODEL_SEEDS = (0, 1, 2)  # a few distinct models, so a file served for the wrong name would show


def batch_independent(variant: str) -> bool:
    """Whether a variant's outputs for a row are the same whatever rows it was batched with: dynamic INT8
    quantization computes its activation scales from the whole batch it is given (adaptive batching of
    queries, a job's batch size), so its outputs can only be compared with a run on the same batch."""
    return "int8-dynamic" not in variant


class Outcome:
    """What the client learnt about a request."""

    ACKED = "acked"  # a success status: the server promised it is done (or, for a job, accepted)
    REFUSED = "refused"  # a 4xx answer: the server promised nothing happened
    UNKNOWN = "unknown"  # no answer (the process died) or a 503: it happened entirely, or not at all


@dataclass
class Registration:
    name: str
    model_seed: int
    outcome: str = Outcome.UNKNOWN
    # The request is over (answered, or its connection dropped): no later commit can make the model appear,
    # so a deletion's 404 from now on means it is absent for good.
    finished: bool = False


@dataclass
class Deletion:
    name: str
    outcome: str = Outcome.UNKNOWN


@dataclass
class JobSubmission:
    model: str
    samples: int
    job_id: str | None = None
    outcome: str = Outcome.UNKNOWN


@dataclass(frozen=True)
class UnavailableAnswer:
    """A 503, kept to check that outages are answered with ``Retry-After``."""

    at: float  # time.monotonic() when it came
    request: str
    code: str
    body: str
    retry_after: str | None


@dataclass
class Ledger:
    """Every request the workload made and what came back; shared by the workload's threads."""

    registrations: dict[str, Registration] = field(default_factory=dict)
    deletions: list[Deletion] = field(default_factory=list)
    jobs: list[JobSubmission] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    unavailable_answers: list[UnavailableAnswer] = field(default_factory=list)
    answered: dict[str, int] = field(default_factory=dict)  # "<op> <status>" -> count
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, op: str, status: int | str) -> None:
        with self.lock:
            key = f"{op} {status}"
            self.answered[key] = self.answered.get(key, 0) + 1

    def violation(self, message: str) -> None:
        with self.lock:
            self.violations.append(message)

    def unavailable(self, request: str, response: httpx.Response) -> None:
        try:
            code = str(response.json().get("code"))
        except ValueError:
            code = "not json"
        answer = UnavailableAnswer(
            time.monotonic(), request, code, response.text[:300], response.headers.get("retry-after")
        )
        with self.lock:
            self.unavailable_answers.append(answer)

    def expectation(self, name: str) -> str:
        """``present``, ``absent`` or ``either``, from the answers to its registration and deletions."""
        registration = self.registrations[name]
        deletions = [d for d in self.deletions if d.name == name]
        if registration.outcome == Outcome.REFUSED or any(d.outcome == Outcome.ACKED for d in deletions):
            return "absent"
        if registration.outcome == Outcome.ACKED and not deletions:
            return "present"
        return "either"

    def deletion_attempted(self, name: str) -> bool:
        return any(d.name == name for d in self.deletions)

    def acked_jobs(self) -> list[JobSubmission]:
        return [j for j in self.jobs if j.outcome == Outcome.ACKED]


class Models:
    """The bytes of the workload's models and validation sets, written once per case."""

    def __init__(self, folder: Path) -> None:
        self.onnx = {seed: mlp_model(in_dim=IN_DIM, seed=seed).SerializeToString() for seed in MODEL_SEEDS}
        self.validation = write_validation(folder / "validation.npz", in_dim=IN_DIM).read_bytes()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class Workload:
    """Random operations against one front-end; each call is one request, recorded in the ledger."""

    OPERATIONS = ("register", "delete", "job", "query", "reprofile", "list")
    WEIGHTS = (4, 1, 3, 4, 1, 1)

    def __init__(self, url: str, store: Path, models: Models, ledger: Ledger, prefix: str) -> None:
        self.url, self.store, self.models, self.ledger, self.prefix = url, store, models, ledger, prefix
        self._names = 0
        self._names_lock = threading.Lock()
        self.http = httpx.Client(base_url=url, timeout=httpx.Timeout(30.0, connect=2.0))

    def close(self) -> None:
        self.http.close()

    def run(self, operation: str, rng: random.Random) -> None:
        """Run one operation (its targets drawn from ``rng``); connection failures are outcomes, not errors."""
        getattr(self, operation)(rng)

    # -- operations ---------------------------------------------------------------------------

    def register(self, rng: random.Random) -> None:
        with self._names_lock:
            self._names += 1
            name = f"{self.prefix}-{self._names}"
        seed = rng.choice(MODEL_SEEDS)
        registration = Registration(name, seed)
        with self.ledger.lock:
            self.ledger.registrations[name] = registration
        files = {
            "model": ("model.onnx", self.models.onnx[seed]),
            "validation": ("validation.npz", self.models.validation),
        }
        try:
            response = self._send("register", "POST", "/v1/models", files=files, data={"name": name, "task": TASK})
            if response is None:
                return
            if response.status_code == 201:
                registration.outcome = Outcome.ACKED
            elif response.status_code < 500:
                registration.outcome = Outcome.REFUSED
        finally:
            registration.finished = True

    def delete(self, rng: random.Random) -> None:
        name = self._pick(rng, lambda r: r.finished and not self.ledger.deletion_attempted(r.name))
        if name is None:
            return
        deletion = Deletion(name)
        with self.ledger.lock:
            self.ledger.deletions.append(deletion)
        response = self._send("delete", "DELETE", f"/v1/models/{name}")
        if response is None:
            return
        if response.status_code in (200, 404):  # 404: never committed, or deleted before; absent either way
            deletion.outcome = Outcome.ACKED
        elif response.status_code < 500:
            deletion.outcome = Outcome.REFUSED

    def job(self, rng: random.Random) -> None:
        name = self._pick(rng, lambda r: r.outcome == Outcome.ACKED and not self.ledger.deletion_attempted(r.name))
        if name is None:
            return
        samples = rng.randint(1, 4000)
        data = np.random.default_rng(rng.randrange(1 << 30)).normal(size=(samples, IN_DIM)).astype(np.float32)
        submission = JobSubmission(name, samples)
        response = self._send("job", "POST", "/v1/jobs", files={"input": ("x.npy", npy(data))}, data={"model": name})
        with self.ledger.lock:
            self.ledger.jobs.append(submission)
        if response is None:
            return
        if response.status_code == 202:
            submission.job_id, submission.outcome = response.json()["id"], Outcome.ACKED
        elif response.status_code < 500:
            submission.outcome = Outcome.REFUSED

    def query(self, rng: random.Random) -> None:
        name = self._pick(rng, lambda r: r.outcome == Outcome.ACKED)
        if name is None:
            return
        x = np.random.default_rng(rng.randrange(1 << 30)).normal(size=(rng.randint(1, 4), IN_DIM)).astype(np.float32)
        response = self._send("query", "POST", "/v1/infer", json={"model": name, "inputs": {"x": x.tolist()}})
        if response is not None and response.status_code == 200:
            self.check_answer(name, x, response.json())

    def reprofile(self, rng: random.Random) -> None:
        name = self._pick(rng, lambda r: r.outcome == Outcome.ACKED)
        if name is not None:
            self._send("reprofile", "POST", f"/v1/models/{name}/profile")

    def list(self, rng: random.Random) -> None:
        self._send("list", "GET", rng.choice(["/v1/models", "/v1/jobs"]))

    # -- helpers ------------------------------------------------------------------------------

    def check_answer(self, name: str, x: np.ndarray, body: dict) -> None:
        """A 200 must carry what ONNX Runtime computes on the artifact of the variant that served it."""
        variant = body["served_by"]["variant"].removesuffix("-t1")  # thread variants share their base's file
        if not batch_independent(variant):
            return
        artifact = self.store / "models" / name / "variants" / f"{variant}.onnx"
        try:
            expected = reference_outputs(artifact.read_bytes(), x)
        except FileNotFoundError:
            return  # deleted since it answered
        got = np.asarray(body["outputs"]["y"], dtype=np.float32)
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
            self.ledger.violation(f"query on {name} served by {variant} answered {got!r}, ONNX Runtime {expected!r}")

    def _pick(self, rng: random.Random, accept) -> str | None:  # type: ignore[no-untyped-def]
        with self.ledger.lock:
            names = sorted(r.name for r in self.ledger.registrations.values() if accept(r))
        return rng.choice(names) if names else None

    def _send(self, op: str, method: str, path: str, **kwargs: object) -> httpx.Response | None:
        """The response, or None when the connection failed (the outcome stays unknown)."""
        try:
            response = self.http.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError:
            self.ledger.count(op, "no answer")
            return None
        self.ledger.count(op, response.status_code)
        if response.status_code == 503:
            self.ledger.unavailable(f"{method} {path}", response)
        elif response.status_code >= 500:
            self.ledger.violation(f"{method} {path} answered {response.status_code}: {response.text[:300]}")
        return response
