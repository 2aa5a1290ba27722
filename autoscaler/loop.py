"""The control loop: observe, decide (pure policies), act or only record, on two periods.

One background thread runs the model level every ``autoscaler_period_s`` and the VM level every
``vm_autoscaler_period_s``. Each period it builds a ``ClusterView`` from live state (arrival rates,
latencies and SLO misses per instance, i.e. per variant on each worker, so one slow worker is not taken
for all; queue depths), the workers' own status (replicas, idle time)
and the candidate cache (profiles), asks the policies, and for every action records a decision
(``metadata.record_decision``) and, unless ``settings.autoscaler`` is ``"dry-run"``, executes it
through the worker clients, live state and the provider. Starting a worker can take minutes (a VM),
so it runs on its own thread; the loop counts it as pending meanwhile.

Every front-end runs this loop, but only the holder of the leader lease (``services.leadership``) acts:
each ``autoscaler_lease_renew_s`` the loop renews it (or tries to take it), and before every single
action it checks that the lease is still held, so a front-end that lost it — renewal refused, Redis
unreachable, or a period slower than the TTL — executes nothing it planned before. A front-end that
becomes the leader first rebuilds the policies' cool-downs from the decision log (``handover.py``) and
records the change as a ``leader`` decision; one that stops leading records ``step_down``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from autoscaler import handover, model_level, pipeline_tuner, vm_level
from autoscaler.pipeline_apply import PipelineScaler
from autoscaler.policy_types import Action, ClusterView, History, InstanceLoad, PolicyConfig, VariantOption, WorkerLoad
from autoscaler.providers import Provider, ProviderError, make_provider
from infaas.catalog import ProfileInfo, VariantInfo
from infaas.replica_scaling import speedups
from infaas.selector import Candidate
from infaas.services import Services

log = logging.getLogger(__name__)

MODES = ("off", "dry-run", "on")
# The window of the rate a burst is read at: one model period, so a burst is seen at its rate in the first period
# after it starts (the statistics window, 5 s, reads a burst 1 s old at a fifth of its rate).
RECENT_WINDOW_S = 1.0


def variant_option(candidate: Candidate, worker_cores: int, prices: dict[str, float]) -> VariantOption:
    """The policies' view of a ready variant: its profile curve, footprint and $/hour per replica."""
    variant = candidate.variant
    profiles = sorted(variant.profiles, key=lambda p: p.batch_size)
    cores = variant.threads or worker_cores
    if variant.hardware == "cpu":
        per_hour = prices.get("cpu-core", 0.0) * cores
    else:
        per_hour = prices.get(variant.hardware, prices.get(f"{variant.hardware}-core", 0.0))
    return VariantOption(
        key=variant.key,
        model=variant.model_name,
        accuracy=candidate.accuracy,
        accuracy_metric=candidate.accuracy_info.metric,
        fidelity=candidate.fidelity,
        hardware=candidate.hardware,
        curve=tuple((p.batch_size, p.latency_p50_ms, p.throughput_per_s) for p in profiles),
        replica_speedups=_replica_speedups(profiles),
        p99_ms=profiles[0].latency_p99_ms,
        memory_mb=candidate.curve.memory_mb,
        cores=cores,
        cost_per_hour=per_hour,
        batch_invariant=candidate.curve.batch_invariant,
    )


def _replica_speedups(profiles: list[ProfileInfo]) -> tuple[tuple[float, ...], ...]:
    """Per profile, the measured speedups of 1, 2, ... replicas; ``()`` unless every batch size has them."""
    measured = tuple(speedups(p.replica_throughput_per_s) for p in profiles)
    return measured if all(measured) else ()


class Autoscaler:
    """Both autoscaling levels on their periods, in one background thread."""

    def __init__(
        self,
        services: Services,
        *,
        provider: Provider | None = None,
        config: PolicyConfig | None = None,
        stats_window_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        settings = services.settings
        if settings.autoscaler not in MODES:
            raise ValueError(f"INFAAS_AUTOSCALER must be one of {MODES}, not {settings.autoscaler!r}")
        if not 0 < settings.autoscaler_lease_renew_s < settings.autoscaler_lease_s:
            raise ValueError(
                f"INFAAS_AUTOSCALER_LEASE_RENEW_S ({settings.autoscaler_lease_renew_s:g}) must be positive and below "
                f"INFAAS_AUTOSCALER_LEASE_S ({settings.autoscaler_lease_s:g}), or the leader loses its lease "
                "between renewals"
            )
        self.services = services
        self.engine = services.engine
        self.config = config or PolicyConfig(idle_unload_s=settings.idle_unload_s)
        self.dry_run = settings.autoscaler == "dry-run"
        self.stats_window_s = stats_window_s
        self._provider = provider
        self._clock = clock
        self._lease = services.leadership
        self._leading = False
        self._model_history = History()
        self._vm_history = History()
        self._unmet: tuple[str, ...] = ()
        self._owned: set[str] = set()
        self._pipelines = PipelineScaler(services)
        self._pending = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._starters: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def provider(self) -> Provider:
        """The provider, made from settings on first use (so ``off`` never touches a cloud API)."""
        if self._provider is None:
            self._provider = make_provider(self.services)
        return self._provider

    def start(self) -> None:
        """Adopt the provider's running workers and start the loop thread."""
        if self._thread is not None:
            return
        try:
            handles = self.provider.workers()
        except ProviderError as exc:
            # Without a provider the model level still runs; the VM level records why it cannot act.
            log.warning("autoscaler provider unavailable: %s", exc)
            handles = []
        for handle in handles:
            try:
                self.engine.workers.add(self.provider.connect(handle))
                self._owned.add(handle.id)
            except Exception:
                log.exception("could not adopt worker %s", handle.id)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="infaas-autoscaler", daemon=True)
        self._thread.start()

    def stop(self, stop_workers: bool = True) -> None:
        """Stop the loop; with ``stop_workers``, also stop every worker it started; then hand the lease over."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        for starter in list(self._starters):
            starter.join(30)
        if stop_workers and self._provider is not None:
            for worker_id in sorted(self._owned):
                self._remove_worker(worker_id)
        if self._leading:
            self._lease.release()  # the next front-end takes over at its next try, not after the TTL
            self._leading = False
            self._record_leadership("step_down", "stopped: lease released")

    def _run(self) -> None:
        settings = self.services.settings
        next_lease = next_model = next_vm = self._clock()
        while not self._stop.is_set():
            now = self._clock()
            try:
                if now >= next_lease:
                    self.lead()
                    next_lease = now + settings.autoscaler_lease_renew_s
                if not self._leading:  # a new leader steps both levels at once
                    next_model = next_vm = now
                else:
                    if now >= next_model:
                        self.step_model()
                        next_model = now + settings.autoscaler_period_s
                    if now >= next_vm:
                        self.step_vm()
                        next_vm = now + settings.vm_autoscaler_period_s
            except Exception:  # the loop must outlive one bad period
                log.exception("autoscaler period failed")
            wake = min(next_lease, next_model, next_vm) if self._leading else next_lease
            self._stop.wait(max(0.01, wake - self._clock()))

    # -- leadership -----------------------------------------------------------------------------
    @property
    def leading(self) -> bool:
        """Whether this front-end holds the lease now (and so may act)."""
        return self._leading and self._lease.held

    def lead(self) -> bool:
        """Renew the lease, or try to take it; on taking it, rebuild the policies' memory first.

        Returns whether this front-end leads now. The loop calls it every ``autoscaler_lease_renew_s``.
        """
        if self._leading:
            if self._lease.renew():
                return True
            self._leading = False
            self._record_leadership("step_down", "lost the lease: renewal refused or Redis unreachable")
            return False
        if not self._lease.try_acquire():
            return False
        taken = handover.rebuild(
            self.services.metadata.list_decisions(limit=handover.DECISIONS_READ),
            now=self._clock(),
            dry_run=self.dry_run,
        )
        self._model_history, self._vm_history, self._unmet = taken.model, taken.vm, ()
        self._leading = True
        self._record_leadership(
            "leader",
            f"took the lease (previous leader: {taken.previous_leader or 'none recorded'}); cool-downs rebuilt "
            f"from {taken.decisions_used} decision(s), streaks and deratings start fresh",
            {
                "previous_leader": taken.previous_leader,
                "decisions_used": taken.decisions_used,
                "lease_s": self.services.settings.autoscaler_lease_s,
            },
        )
        return True

    def _record_leadership(self, action: str, reason: str, inputs: dict | None = None) -> None:
        """A leadership change as a decision (level ``leader``): ``leader`` or ``step_down``, naming this front-end."""
        self._record(Action(handover.LEVEL, action, self._lease.holder, reason, inputs or {}), None)

    # -- one period of each level ---------------------------------------------------------------
    def step_model(self) -> list[Action]:
        """Observe, decide and act once at the model level (only while leading); returns the actions decided."""
        if not self.leading:
            return []
        view = self.view()
        candidates = {key: found[0] for key, found in self._variants().items()}
        plan = model_level.decide(view, self._model_history, self.config, self._pipelines.pinned(candidates))
        self._model_history = plan.history
        self._unmet = plan.unmet
        for action in plan.actions:
            self._apply(action)
        tuned = self._pipelines.decide(candidates)  # planned pipelines: the plan, then the tuner
        for action in tuned:
            self._apply(action)
        return [*plan.actions, *tuned]

    def step_vm(self) -> list[Action]:
        """Observe, decide and act once at the VM level (only while leading); returns the actions decided."""
        if not self.leading:
            return []
        view = self.view()
        plan = vm_level.decide(view, self._vm_history, self.config, self._unmet, self._model_history.derate)
        self._vm_history = plan.history
        for action in plan.actions:
            self._apply(action)
        return list(plan.actions)

    # -- observing ------------------------------------------------------------------------------
    def _variants(self) -> dict[str, tuple[Candidate, VariantOption]]:
        settings = self.services.settings
        cache = self.engine.cache
        out: dict[str, tuple[Candidate, VariantOption]] = {}
        for model in cache.all_models():
            for candidate in cache.for_model(model.name):
                option = variant_option(candidate, settings.worker_cores, dict(settings.prices))
                out[candidate.key] = (candidate, option)
        return out

    def view(self) -> ClusterView:
        """The cluster as the policies see it now."""
        live = self.engine.live
        settings = self.services.settings
        variants = {k: v[1] for k, v in self._variants().items()}
        snapshot = live.snapshot()
        stats = live.instance_stats(self.stats_window_s)
        recent = live.instance_stats(RECENT_WINDOW_S)  # a burst's rate now, which the window above lags
        wall = time.time()
        floors: dict[str, float] = {}  # the strictest min_accuracy of recent queries, per variant
        fidelity_floors: dict[str, float] = {}  # and min_fidelity: upgrades and downgrades must meet both
        budgets: dict[str, float] = {}
        rows: dict[str, list[int]] = {}  # rows per query: capacities are profiled in rows/s
        last_seen: dict[tuple[str, str], float] = {}
        for record in live.recent_queries(1000):
            key = record.variant_key
            last_seen[(record.worker, key)] = max(last_seen.get((record.worker, key), 0.0), record.at)
            if record.at < wall - self.stats_window_s:
                continue
            floors[key] = max(floors.get(key, 0.0), record.min_accuracy)
            fidelity_floors[key] = max(fidelity_floors.get(key, 0.0), record.min_fidelity)
            rows.setdefault(key, []).append(max(1, record.batch))
            if record.latency_ms is not None:
                budgets[key] = min(budgets.get(key, record.latency_ms), record.latency_ms)

        workers: list[WorkerLoad] = []
        for state in snapshot.workers:
            client = self.engine.workers.get(state.id)
            loaded: list[tuple[str, int, float | None]] = []  # key, replicas, idle_s (None: unknown)
            if client is not None:
                try:
                    status = client.status()
                    loaded = [(i.variant_key, i.replicas, i.idle_s) for i in status.instances]
                except Exception:
                    log.warning("status of worker %s failed; using live state", state.id, exc_info=True)
            if not loaded:
                loaded = [
                    (i.variant_key, i.replicas, None)
                    for group in snapshot.instances.values()
                    for i in group
                    if i.worker_id == state.id
                ]
            instances = []
            for key, replicas, idle_s in loaded:
                stat = stats.get((state.id, key))  # this instance's own: the selector spreads load unevenly
                now_stat = recent.get((state.id, key))
                sizes = rows.get(key)
                rows_per_query = sum(sizes) / len(sizes) if sizes else 1.0
                if idle_s is None:
                    seen = last_seen.get((state.id, key), 0.0)
                    idle_s = wall - seen if seen else 0.0
                instances.append(
                    InstanceLoad(
                        worker_id=state.id,
                        variant_key=key,
                        replicas=replicas,
                        queue_depth=snapshot.depth(state.id, key),
                        rate_per_s=(stat.rate_per_s if stat else 0.0) * rows_per_query,
                        recent_rate_per_s=(now_stat.rate_per_s if now_stat else 0.0) * rows_per_query,
                        p99_ms=stat.p99_ms if stat else 0.0,
                        slo_miss_rate=stat.slo_miss_rate if stat else 0.0,
                        infeasible_rate=stat.infeasible_rate if stat else 0.0,
                        idle_s=idle_s,
                        accuracy_floor=floors.get(key, 0.0),
                        fidelity_floor=fidelity_floors.get(key, 0.0),
                        budget_ms=budgets.get(key),
                        rows_per_query=rows_per_query,
                        cpu_share=state.cpu_share,
                    )
                )
            workers.append(
                WorkerLoad(
                    id=state.id,
                    cores=state.cores,
                    memory_budget_mb=state.memory_budget_mb,
                    memory_used_mb=state.memory_used_mb,
                    instances=tuple(instances),
                    draining=state.draining,
                    removable=state.id in self._owned,
                    hardware=state.hardware,
                )
            )
        with self._lock:
            pending = self._pending
        return ClusterView(
            now=self._clock(),
            workers=tuple(workers),
            variants=variants,
            min_workers=settings.min_workers,
            max_workers=settings.max_workers,
            pending_workers=pending,
        )

    # -- acting ---------------------------------------------------------------------------------
    def _record(self, action: Action, outcome: str | None, *, name: str | None = None) -> None:
        # Which front-end decided, and what an upgrade or downgrade loaded: a new leader rebuilds from these.
        inputs = {**action.inputs, "front_end": self._lease.holder}
        log.info(
            "autoscaler %s %s: %s (%s)",
            action.action,
            action.target,
            action.reason,
            outcome or ("dry run" if self.dry_run else "pending"),
            extra={
                "event": "autoscaler_decision",
                "autoscaler_level": action.level,
                "action": name or action.action,
                "target": action.target,
                "outcome": outcome,
                "dry_run": self.dry_run,
            },
        )
        if action.to_variant is not None:
            inputs.update(worker=action.worker, to_variant=action.to_variant)
        try:
            self.services.metadata.record_decision(
                level=action.level,
                action=name or action.action,
                target=action.target,
                inputs=inputs,
                reason=action.reason,
                dry_run=self.dry_run,
                outcome=outcome,
            )
        except Exception:
            log.exception("could not record decision %s %s", action.action, action.target)

    def _apply(self, action: Action) -> None:
        if not self.leading:  # lost the lease while this period was being decided: its plan is void
            log.warning("not leading any more: %s on %s is not carried out", action.action, action.target)
            return
        if self.dry_run:
            self._record(action, None)
            return
        if action.action == "add_worker":
            self._record(action, "starting")
            for _ in range(action.count):  # the VM level sizes a step to the workers the load is short
                self._start_worker_async(action)
            return
        try:
            outcome = self._execute(action)
        except Exception as exc:
            log.warning("autoscaler action %s on %s failed: %s", action.action, action.target, exc)
            outcome = f"failed: {exc}"
        self._record(action, outcome)

    def _variant(self, key: str | None) -> VariantInfo:
        found = self._variants().get(key or "")
        if found is None:
            raise LookupError(f"{key} is not a ready variant")
        return found[0].variant

    def _execute(self, action: Action) -> str:
        """Carry out one action; returns what happened."""
        live = self.engine.live
        if action.level == vm_level.LEVEL:
            if action.action == "drain_worker":
                live.set_draining(action.target, True)
                return "draining"
            if action.action == "undrain":
                live.set_draining(action.target, False)
                return "taking queries again"
            if action.action == "remove_worker":
                self._remove_worker(action.target)
                return "stopped"
            if action.action in vm_level.NOTES:
                return "nothing to do"
            raise ValueError(f"unknown VM action {action.action!r}")
        if action.level == pipeline_tuner.LEVEL:
            return self._pipelines.execute(action, self._variant(action.variant))
        client = self.engine.workers.get(action.worker or "")
        if client is None:
            raise LookupError(f"worker {action.worker} is not reachable from this front-end")
        if action.action in {"add_replica", "place"}:
            variant = self._variant(action.variant)
            if action.action == "place":
                client.load(variant)
                replicas = 1
                for _ in range(action.count - 1):
                    replicas = client.add_replica(variant)
            else:
                for _ in range(action.count):
                    replicas = client.add_replica(variant)
            return f"{replicas} replica(s)"
        if action.action == "remove_replica":
            replicas = 0
            for _ in range(action.count):
                replicas = client.remove_replica(action.variant or "")
            return f"{replicas} replica(s)"
        if action.action in {"upgrade", "downgrade"}:
            new = self._variant(action.to_variant)
            client.load(new)
            for _ in range(action.count - 1):
                client.add_replica(new)
            client.unload(action.variant or "")
            return f"{action.to_variant} loaded with {action.count} replica(s), {action.variant} unloaded"
        if action.action == "unload":
            return "unloaded" if client.unload(action.variant or "") else "was not loaded"
        raise ValueError(f"unknown model action {action.action!r}")

    def _start_worker_async(self, action: Action) -> None:
        with self._lock:
            self._pending += 1

        def start() -> None:
            try:
                handle = self.provider.start_worker()
                try:
                    self.engine.workers.add(self.provider.connect(handle))
                except Exception:
                    self.provider.stop_worker(handle.id)
                    raise
                self._owned.add(handle.id)
                self._record(replace(action, target=handle.id), f"started {handle.address}", name="worker_started")
            except Exception as exc:
                log.warning("starting a worker failed: %s", exc)
                self._record(action, f"failed: {exc}", name="worker_failed")
            finally:
                with self._lock:
                    self._pending -= 1

        thread = threading.Thread(target=start, name="infaas-autoscaler-start", daemon=True)
        self._starters = [t for t in self._starters if t.is_alive()] + [thread]
        thread.start()

    def _remove_worker(self, worker_id: str) -> None:
        self.engine.workers.remove(worker_id)
        try:
            self.provider.stop_worker(worker_id)
        finally:
            self._owned.discard(worker_id)
            self.engine.live.remove_worker(worker_id)
