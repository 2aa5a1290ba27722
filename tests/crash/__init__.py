"""Crash-consistency tests: real infaas processes killed with SIGKILL (and PostgreSQL or Redis stopped)
at random moments under a random workload, then checked for what must survive any crash.

``make test`` runs a bounded number of kill points (``CRASH_KILLS``, default 50, split over the
embedded default and the scaled-out deployment, ten per case). A longer run:

    CRASH_KILLS=500 .venv/bin/pytest -p no:cacheprovider tests/crash

Every case draws its operations, its kill moments and its victims from ``random.Random(seed)``; a
failing case prints its seed, and ``CRASH_SEED=<seed> .venv/bin/pytest tests/crash -k '<case id>'``
replays the same draws (the moments are then the same offsets, though the machine's timing is not).
"""
