"""infaas HTTP API: FastAPI app factory, REST routes, Open Inference Protocol and admin console."""
