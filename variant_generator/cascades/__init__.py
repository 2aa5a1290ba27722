"""Cascades over variants (issue 16): candidates, threshold sweep with a bootstrap test, cost model, decisions.

``variant_generator.cascades.construct.build_task_cascades`` runs after a model's variant build, for every model
of its task; see ``docs/cascades.md``.
"""
