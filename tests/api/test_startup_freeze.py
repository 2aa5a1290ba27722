"""``infaas serve``'s start-up state is frozen out of the collector's full collections (``api.app``), and thawed at
shutdown so that an app closed in a longer-lived process (tests) leaves nothing pinned."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from api.app import create_app
from infaas.config import Settings
from infaas.services import Services


def test_start_up_objects_are_frozen_while_serving_and_thawed_after(settings: Settings, services: Services) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    with TestClient(create_app(settings, services=services)) as client:
        assert client.get("/v1/models").status_code == 200
        assert gc.get_freeze_count() > 10_000  # the app, its services and every imported module
    assert gc.get_freeze_count() == 0
