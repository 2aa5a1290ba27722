"""What must hold after any crash, read from the outside: the database rows, the files of the model
store, and the HTTP API.

1. Every acknowledged registration exists with its files (byte for byte); an unacknowledged one exists
   entirely or not at all; the same for deletions.
2. No orphans: every stored file belongs to a row, every row's files exist, no temporary file is left.
3. Nothing stuck: once recovery had its time, no model, variant or job is in a non-final state.
4. Every acknowledged offline job finishes exactly once: ``done`` with one result (its file never
   rewritten once seen done, holding the model's outputs for every input row), or ``failed`` with a
   reason when its model was deleted under it.
5. The server answers queries: a new registration builds and every ready model answers correctly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text

from tests.crash.deployments import Deployment
from tests.crash.workload import Ledger, Workload, batch_independent
from tests.factories import reference_outputs

FINAL_MODEL = {"ready", "failed"}
FINAL_VARIANT = {"ready", "failed", "skipped"}
FINAL_JOB = {"done", "failed"}
FINAL_WORK = {"done", "failed"}


@dataclass(frozen=True)
class Catalog:
    """The rows and files of a deployment at one moment."""

    models: dict[str, dict]  # name -> row
    variants: list[dict]
    jobs: dict[str, dict]  # id -> row
    work: list[dict]  # work_items rows: durable background work
    orphan_rows: list[str]
    files: dict[str, Path]  # store key -> path


def read_catalog(deployment: Deployment) -> Catalog:
    """Every row that refers to the store, and every file in it, read straight from the database and folder."""
    engine = create_engine(deployment.database_url)
    try:
        with engine.connect() as conn:
            models = {r["name"]: dict(r) for r in conn.execute(text("SELECT * FROM models")).mappings()}
            variants = [
                dict(r)
                for r in conn.execute(
                    text("SELECT v.*, m.name AS model_name FROM variants v LEFT JOIN models m ON m.id = v.model_id")
                ).mappings()
            ]
            jobs = {r["id"]: dict(r) for r in conn.execute(text("SELECT * FROM jobs")).mappings()}
            work = [dict(r) for r in conn.execute(text("SELECT * FROM work_items")).mappings()]
            for item in work:  # a JSON column read by plain SQL: text on SQLite, decoded on PostgreSQL
                if isinstance(item["kwargs"], str):
                    item["kwargs"] = json.loads(item["kwargs"])
            orphan_profiles = conn.execute(
                text("SELECT count(*) FROM profiles p LEFT JOIN variants v ON v.id = p.variant_id WHERE v.id IS NULL")
            ).scalar_one()
    finally:
        engine.dispose()
    orphan_rows = [
        f"variant row {v['name']!r} of a deleted model (id {v['model_id']})" for v in variants if not v["model_name"]
    ]
    if orphan_profiles:
        orphan_rows.append(f"{orphan_profiles} profile rows of deleted variants")
    return Catalog(models, variants, jobs, work, orphan_rows, store_files(deployment.store))


def store_files(store: Path) -> dict[str, Path]:
    """Every file in the store folder by key; walked again if a folder vanished under the walk."""
    for _ in range(10):
        try:
            return {str(p.relative_to(store)): p for p in store.rglob("*") if p.is_file()} if store.is_dir() else {}
        except FileNotFoundError:  # a deletion removed a folder the walk was about to enter
            time.sleep(0.05)
    raise AssertionError(f"the store {store} kept changing under ten walks")


def unsettled(catalog: Catalog) -> list[str]:
    """Work not in a final state, orphans, and rows whose files are missing: what recovery must clear."""
    problems = [f"model {n} is {m['status']}" for n, m in catalog.models.items() if m["status"] not in FINAL_MODEL]
    problems += [
        f"variant {v['model_name']}/{v['name']} is {v['status']}"
        for v in catalog.variants
        if v["model_name"] and v["status"] not in FINAL_VARIANT
    ]
    problems += [f"job {j} is {row['status']}" for j, row in catalog.jobs.items() if row["status"] not in FINAL_JOB]
    problems += [
        f"work item {w['task']}({w['kwargs']}) is {w['state']} after {w['attempts']} attempts"
        for w in catalog.work
        if w["state"] not in FINAL_WORK
    ]
    return problems + orphans(catalog)


def orphans(catalog: Catalog) -> list[str]:
    """Files no row refers to, rows whose files are gone, and rows of deleted parents."""
    referenced: set[str] = set()
    missing: list[str] = []

    def needs(key: str | None, owner: str) -> None:
        if key:
            referenced.add(key)
            if key not in catalog.files:
                missing.append(f"{owner} refers to {key}, which is not in the store")

    for name, model in catalog.models.items():
        needs(model["artifact_key"], f"model {name}")
        needs(model["validation_key"], f"model {name}")
    for variant in catalog.variants:
        if variant["model_name"] and variant["artifact_key"]:
            referenced.add(variant["artifact_key"])
            if variant["status"] == "ready":
                needs(variant["artifact_key"], f"ready variant {variant['model_name']}/{variant['name']}")
    for job_id, job in catalog.jobs.items():
        needs(job["input_key"], f"job {job_id}")
        if job["status"] == "done":
            needs(job["result_key"], f"done job {job_id}")
    stray = sorted(set(catalog.files) - referenced)
    return catalog.orphan_rows + missing + [f"orphan file {key}" for key in stray]


def wait_settled(deployment: Deployment, timeout_s: float) -> list[str]:
    """Poll until nothing is unsettled or ``timeout_s`` passes; what is still unsettled then."""
    deadline = time.monotonic() + timeout_s
    while True:
        problems = unsettled(read_catalog(deployment))
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(0.25)


@dataclass
class ResultWatch:
    """Each done job's result file as first seen: a rewrite (a second run) changes inode or mtime."""

    first_seen: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def observe(self, catalog: Catalog) -> list[str]:
        """Record newly done jobs; report done jobs whose result changed or vanished since first seen."""
        problems = []
        for job_id, job in catalog.jobs.items():
            if job["status"] != "done" or not job["result_key"]:
                if job_id in self.first_seen:
                    problems.append(f"job {job_id} was done and is now {job['status']}")
                continue
            path = catalog.files.get(job["result_key"])
            if path is None:
                continue  # reported by orphans()
            stat = path.stat()
            fingerprint = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            seen = self.first_seen.setdefault(job_id, fingerprint)
            if seen != fingerprint:
                problems.append(f"job {job_id}'s result was written again after it was done (run twice)")
        return problems


def registrations(
    catalog: Catalog, ledger: Ledger, workload: Workload, names: Iterable[str] | None = None
) -> list[str]:
    """Invariant 1: acknowledged registrations exist with their files, unacknowledged ones all or nothing."""
    problems = []
    for name in sorted(names if names is not None else ledger.registrations):
        registration = ledger.registrations[name]
        expected = ledger.expectation(name)
        row = catalog.models.get(name)
        files = sorted(k for k in catalog.files if k.startswith(f"models/{name}/"))
        if row is None:
            if expected == "present":
                problems.append(f"acknowledged registration {name} is lost (files left: {files})")
            elif files:
                problems.append(f"{name} has no row but files {files} ({registration.outcome} registration)")
            continue
        if expected == "absent":
            problems.append(f"{name} exists but its deletion was acknowledged (or its registration refused)")
            continue
        model_file = catalog.files.get(f"models/{name}/model.onnx")
        validation_file = catalog.files.get(f"models/{name}/validation.npz")
        if model_file is None or model_file.read_bytes() != workload.models.onnx[registration.model_seed]:
            problems.append(f"{name} exists ({registration.outcome} registration) without its model file intact")
        if validation_file is None or validation_file.read_bytes() != workload.models.validation:
            problems.append(f"{name} exists ({registration.outcome} registration) without its validation file intact")
    return problems


def jobs(catalog: Catalog, ledger: Ledger) -> list[str]:
    """Invariant 4: acknowledged jobs end exactly once, with the model's outputs for every input row."""
    problems = []
    for submission in ledger.acked_jobs():
        assert submission.job_id is not None
        job = catalog.jobs.get(submission.job_id)
        if job is None:
            problems.append(f"acknowledged job {submission.job_id} on {submission.model} is lost")
            continue
        if job["status"] == "failed":
            if not ledger.deletion_attempted(submission.model):
                problems.append(f"job {submission.job_id} on {submission.model} failed: {job['error']}")
            elif not job["error"]:
                problems.append(f"job {submission.job_id} failed without a reason")
            continue
        if job["status"] != "done":
            continue  # reported as unsettled
        results = sorted(k for k in catalog.files if k.startswith(f"jobs/{submission.job_id}/result"))
        if results != [job["result_key"]]:
            problems.append(f"job {submission.job_id} has results {results}, expected exactly [{job['result_key']}]")
            continue
        problems += _job_outputs(catalog, submission.job_id, job, submission.samples)
    return problems


def _job_outputs(catalog: Catalog, job_id: str, job: dict, samples: int) -> list[str]:
    """The result holds, for every input row, what ONNX Runtime computes with the variant the job ran on
    (checked while that variant's file is still stored, a later deletion of the model removes it, and for
    variants whose outputs do not depend on the job's batch size)."""
    with np.load(catalog.files[job["result_key"]]) as result:
        outputs = result["y"]
    if outputs.shape != (samples, 3):
        return [f"job {job_id}'s result has shape {outputs.shape}, not ({samples}, 3)"]
    model, _, variant = (job["variant"] or "").partition("/")
    artifact = catalog.files.get(f"models/{model}/variants/{variant.removesuffix('-t1')}.onnx")
    if artifact is None or not batch_independent(variant):
        return []
    expected = reference_outputs(artifact.read_bytes(), np.load(catalog.files[job["input_key"]]))
    if not np.allclose(outputs, expected, rtol=1e-4, atol=1e-4):
        return [f"job {job_id}'s result differs from {job['variant']}'s outputs on its input"]
    return []


def duplicate_work(catalog: Catalog, ledger: Ledger) -> list[str]:
    """One work item per acknowledged job: a second one would run the job twice."""
    items: dict[str, int] = {}
    for item in catalog.work:
        job_id = (item["kwargs"] or {}).get("job_id")
        if item["task"] == "offline_job" and job_id:
            items[job_id] = items.get(job_id, 0) + 1
    return [
        f"job {s.job_id} has {items[s.job_id]} work items (queued more than once)"
        for s in ledger.acked_jobs()
        if s.job_id is not None and items.get(s.job_id, 0) > 1
    ]


def check(deployment: Deployment, ledger: Ledger, workload: Workload, watch: ResultWatch) -> list[str]:
    """Every invariant of the settled rows and files; an empty list when all hold (what the workload saw
    answered is in ``ledger.violations``)."""
    catalog = read_catalog(deployment)
    return (
        unsettled(catalog)
        + registrations(catalog, ledger, workload)
        + jobs(catalog, ledger)
        + duplicate_work(catalog, ledger)
        + watch.observe(catalog)
    )
