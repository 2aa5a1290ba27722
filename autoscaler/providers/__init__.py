"""Worker providers: where the VM-level autoscaler gets workers from."""

from __future__ import annotations

import uuid

from autoscaler.providers.base import Provider, ProviderError, WorkerHandle
from infaas.services import Services


def make_provider(services: Services) -> Provider:
    """The provider named by ``settings.resolved_provider`` (``local``, ``ec2``, ``docker`` or ``inprocess``)."""
    settings = services.settings
    provider = settings.resolved_provider
    if provider == "local":
        from autoscaler.providers.local import LocalProvider

        if not settings.redis_url:
            raise ProviderError("the local provider needs INFAAS_REDIS_URL: workers find front-ends through it")

        return LocalProvider(settings)
    if provider == "ec2":
        from autoscaler.providers.ec2 import Ec2Provider

        return Ec2Provider(settings)
    if provider == "docker":
        from autoscaler.providers.docker import DockerProvider

        return DockerProvider(settings)
    if provider == "inprocess":
        from autoscaler.providers.inprocess import InProcessProvider

        return InProcessProvider(
            services.store,
            services.live,
            memory_budget_mb=settings.worker_memory_mb,
            cores=settings.worker_cores,
            heartbeat_s=settings.heartbeat_s,
            # Front-ends share one live state: each names its in-process workers apart, so a new leader's
            # first worker is never taken for its predecessor's (which live state still lists until its TTL).
            prefix=f"inproc-{uuid.uuid4().hex[:6]}",
        )
    raise ProviderError(f"unknown provider {provider!r}: use local, ec2, docker or inprocess")


__all__ = ["Provider", "ProviderError", "WorkerHandle", "make_provider"]
