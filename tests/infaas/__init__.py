"""Tests of the core (`infaas/`): selection, workers, stores, jobs, codecs, CLI, scale-out."""
