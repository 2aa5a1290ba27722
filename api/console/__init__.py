"""The admin console: server-rendered pages at ``/console`` (wire with ``app.include_router(router)``)."""

from api.console.routes import router

__all__ = ["router"]
