"""The hostile-tenant suite (``tests/fuzz/hostile_tenant.py``) with a small budget: issue 14's reproduced requests
and one random variation of each family, every one answered with its safe status, nothing stored or deleted.

``python -m tests.fuzz.run_fuzz --hostile-rounds N`` runs it long; ``INFAAS_FUZZ_HOSTILE_ROUNDS`` raises the budget
here, ``INFAAS_FUZZ_SEED`` replays a failing seed.
"""

from __future__ import annotations

import os

from tests.fuzz.hostile_tenant import run_hostile_tenant


def test_hostile_tenant_suite_finds_nothing() -> None:
    rounds = int(os.environ.get("INFAAS_FUZZ_HOSTILE_ROUNDS", "1"))
    seed = int(os.environ.get("INFAAS_FUZZ_SEED", "14"))
    summary = run_hostile_tenant(rounds, seed)
    assert summary["failures"] == [], summary["failures"]
    assert summary["probes"] >= 100
