"""Pipelines: DAGs of models planned to an end-to-end P99 objective at least cost (issue 17, after InferLine).

One concept per module: ``spec`` (the definition and its structural checks), ``validation`` (against the
catalog), ``store`` (the table), ``dag`` (which rows reach which stage), ``scale`` (scale factors),
``options`` (a stage's usable variants), ``simulator`` (SimPy estimator), ``planner`` (greedy plan),
``serving`` (the DAG run through the query engine), ``registry`` (register/read/delete).
"""
