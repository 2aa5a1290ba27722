"""Background work: variant builds and offline queries.

Tasks are plain functions registered by name (``infaas.jobs.tasks``). A runner submits them: in-process
on the embedded default, as Celery tasks when ``INFAAS_BROKER_URL`` is set. Callers only see ``JobRunner``.
"""

from infaas.jobs.runner import InProcessRunner, JobRunner

__all__ = ["InProcessRunner", "JobRunner"]
