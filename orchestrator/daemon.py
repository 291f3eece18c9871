"""`orchestrator run`: the composition root of the long-running daemon.

It owns every nursery. Start-up: database (migrated), provider client, the
actor registry, a first lease round (this daemon's partition slots), then
intake (recovery of the slots taken first) and the sweeper. Shutdown on
SIGTERM/SIGINT or `Daemon.stop()`: intake and sweeper stop at once. When
other daemons are alive, running jobs are handed over: their tasks are
dropped, the slots released with a NOTIFY, and the others resume the jobs
from their recorded predictions within a second. A daemon alone gives its
running jobs the grace period instead. Whatever is left either way is in
flight for the slots' next owner. SIGKILL at any instant loses nothing
either: the leases expire and the others take the slots.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import secrets
import signal
import socket
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import attrs
import httpx
import hypercorn.config
import hypercorn.trio
import structlog
import trio

from actors import (
    ActorConfig,
    BreakerProvider,
    Capacity,
    InFlightGate,
    ListingWatch,
    LoadMonitor,
    RateBudget,
    Registry,
    Routes,
    ServicePacer,
)
from orchestrator.auditor import run_auditor
from orchestrator.callbacks import CallbackSender
from orchestrator.core import (
    BreakerPolicy,
    CallbackPolicy,
    HostList,
    InputImages,
    JobTracing,
    NullTracing,
    Provider,
    origin,
)
from orchestrator.db import DAEMON_ROLE, Database, DbError, SchemaNotCurrent, open_database
from orchestrator.http import HttpApp
from orchestrator.intake import Intake
from orchestrator.leases import LeaseKeeper, member_id
from orchestrator.metrics import Metrics, version
from orchestrator.outputs import (
    Downloader,
    FileLocation,
    FileObjects,
    FileRoutes,
    ObjectStore,
    S3Access,
    S3Objects,
    StorageLocation,
    StorageObserver,
    StoredInputs,
    parse_storage_url,
    render_key,
)
from orchestrator.providers import KieProvider, ReplicateProvider
from orchestrator.reconcile import Reconciler
from orchestrator.settings import Settings, SettingsError
from orchestrator.sweeper import Sweeper
from orchestrator.transport import queued_client
from orchestrator.ui import WebUI
from orchestrator.webhooks import WebhookHandler

log = structlog.get_logger("orchestrator.daemon")

_PUBLIC_REPLICATE: Final = "api.replicate.com"
_PUBLIC_KIE: Final = "api.kie.ai"
# Admissions a second before the daemon has measured what it can finish.
_FIRST_ADMISSION_RATE: Final = 50.0
_REPLICATE_DELIVERY: Final = ("replicate.delivery", "pbxt.replicate.delivery")
_TRACE_FLUSH_S: Final = 5.0
_DEFAULT_REGION: Final = "us-east-1"
_WILDCARDS: Final = frozenset({"0.0.0.0", "::", ""})  # noqa: S104  (what to refuse, not bind)
_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})
_SIGNING_KEY_FILE: Final = ".signing-key"
_MIN_SIGNING_KEY_BYTES: Final = 32


class Daemon:
    """A running daemon's handle: its parts, for tests and the HTTP endpoints."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        intake: Intake,
        sweeper: Sweeper,
        metrics: Metrics,
        keeper: LeaseKeeper,
    ) -> None:
        self.db = db
        self.keeper = keeper
        self.registry = registry
        self.intake = intake
        self.sweeper = sweeper
        self.metrics = metrics
        self.http_url = ""
        self.monitor: LoadMonitor | None = None
        self.webhooks: WebhookHandler | None = None
        self.callbacks: CallbackSender | None = None  # set by `assemble`
        self.files: FileRoutes | None = None
        self._stop = trio.Event()

    async def readiness(self) -> dict[str, bool]:
        return {
            "database": await self.db.ping(),
            "schema": await self.db.schema_is_current(),
            "listener": self.intake.stats.connected,
            "leases": self.keeper.rounds > 0,
        }

    def stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()


def webhook_base(settings: Settings, provider: str | None = None) -> str | None:
    """Where a provider (the default one unless named) calls back, or None: polling alone.

    Raises:
        SettingsError: webhooks requested without a secret, unless unsigned ones are allowed.
    """
    if not settings.public_url:
        return None
    if not settings.webhook_secret and not settings.accept_unsigned_webhooks:
        raise SettingsError(
            "ORCHESTRATOR_PUBLIC_URL enables webhooks: set ORCHESTRATOR_WEBHOOK_SECRET, or "
            "ORCHESTRATOR_ACCEPT_UNSIGNED_WEBHOOKS=1 to accept forgeable ones"
        )
    return f"{settings.public_url.rstrip('/')}/webhooks/{provider or settings.provider}"


def capacity(settings: Settings) -> Capacity:
    """The daemon's limits: jobs in flight, provider rates (0 = off), an admission pace.

    The pace exists when the daemon steers itself (`ORCHESTRATOR_LAG_TARGET`).
    """
    return Capacity(
        gate=InFlightGate(settings.max_in_flight),
        creates=RateBudget(settings.create_rate) if settings.create_rate else None,
        polls=RateBudget(settings.poll_rate) if settings.poll_rate else None,
        admissions=RateBudget(_FIRST_ADMISSION_RATE) if settings.lag_target_s else None,
    )


def listing_watch(
    settings: Settings, provider: Provider, limits: Capacity, webhooks_at: str | None
) -> ListingWatch | None:
    """Coalesced polling through Replicate's listing, when webhooks are off and it is on."""
    if webhooks_at is not None or settings.provider != "replicate" or not settings.list_poll_s:
        return None
    return ListingWatch(provider, interval_s=settings.list_poll_s, polls=limits.polls)


def actor_config(settings: Settings, webhooks_at: str | None) -> ActorConfig:
    return ActorConfig(
        deadline_s=settings.job_deadline_s,
        poll_initial_s=settings.poll_initial_s,
        poll_multiplier=settings.poll_multiplier,
        poll_max_s=settings.poll_max_s,
        webhook_poll_s=settings.webhook_poll_s,
        cancel_timeout_s=settings.cancel_timeout_s,
        prediction_retries=settings.prediction_retries,
        retry_backoff_s=settings.retry_backoff_s,
        idle_s=settings.actor_idle_s,
        mailbox_size=settings.mailbox_size,
        provider_name=settings.provider,
        output_concurrency=settings.output_concurrency,
        allowed_params=settings.allowed_params,
        webhook_url=webhooks_at,
        input_hosts=HostList.parse(settings.input_hosts),
        callback_hosts=HostList.parse(settings.callback_hosts),
    )


@asynccontextmanager
async def open_provider(settings: Settings) -> AsyncIterator[Provider]:
    """The default provider over one pooled HTTP client.

    Raises:
        SettingsError: a real provider without its token.
    """
    async with open_providers(settings) as providers:
        yield providers[settings.provider]


@asynccontextmanager
async def open_providers(settings: Settings) -> AsyncIterator[dict[str, Provider]]:
    """Every configured provider (`ORCHESTRATOR_PROVIDERS`) over one pooled HTTP client.

    Raises:
        SettingsError: a real provider without its token.
    """
    timeout = httpx.Timeout(10.0, connect=5.0)
    async with queued_client(limit=settings.provider_connections, timeout=timeout) as client:
        yield {name: _adapter(settings, name, client) for name in settings.configured_providers}


def _adapter(settings: Settings, name: str, client: httpx.AsyncClient) -> Provider:
    if name == "kie":
        if settings.kie_api_token is None and _PUBLIC_KIE in settings.kie_api_base:
            raise SettingsError("KIE_API_TOKEN is required to use KIE")
        return KieProvider(
            client,
            base_url=settings.kie_api_base,
            token=settings.kie_api_token or "unset",
            model=settings.kie_model,
        )
    token = settings.replicate_api_token
    if token is None and _PUBLIC_REPLICATE in settings.replicate_api_base:
        raise SettingsError("REPLICATE_API_TOKEN is required to use Replicate")
    return ReplicateProvider(
        client,
        base_url=settings.replicate_api_base,
        token=token or "unset",
        model=settings.replicate_model,
    )


def routes(settings: Settings, providers: Mapping[str, Provider], metrics: Metrics) -> Routes:
    """Each configured provider behind its circuit breaker, the default and the fallback."""
    policy = BreakerPolicy(
        threshold=settings.breaker_threshold,
        window_s=settings.breaker_window_s,
        cooldown_s=settings.breaker_cooldown_s,
        max_cooldown_s=settings.breaker_max_cooldown_s,
    )
    metrics.breakers.known(providers)
    return Routes(
        {
            name: BreakerProvider(name, provider, policy=policy, observer=metrics.breakers)
            for name, provider in providers.items()
        },
        primary=settings.provider,
        fallback=settings.fallback_provider,
        webhook_urls={name: webhook_base(settings, name) for name in providers},
        allowed_params={name: settings.allowed_params_of(name) for name in providers},
        observer=metrics.breakers,
    )


def storage_root(settings: Settings) -> Path:
    return (settings.storage_root or settings.home).expanduser()


def storage_location(settings: Settings) -> StorageLocation:
    """Where outputs and inputs live: ORCHESTRATOR_STORAGE_URL, else files under the root.

    Raises:
        SettingsError: a storage URL that is neither file:///abs nor s3://bucket.
    """
    url = settings.storage_url or f"file://{storage_root(settings).resolve()}"
    try:
        return parse_storage_url(url)
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc


def object_store(
    settings: Settings, base_url: str, *, signs: bool = True
) -> tuple[ObjectStore, FileRoutes | None]:
    """The store the settings name, and its read-only HTTP routes when it is files.

    `base_url` is where this daemon's HTTP port is reached (its public URL, or the
    bound one): file-mode public and presigned URLs point there. A store that `signs`
    nothing (the CLI's) leaves the shared signing key alone.

    Raises:
        SettingsError: an unusable storage URL, or S3 without credentials.
    """
    location = storage_location(settings)
    if isinstance(location, FileLocation):
        key = signing_key(settings, location.root, create=signs)
        store = FileObjects(
            location.root,
            base_url=base_url,
            signing_key=key,
            public_base_url=settings.public_outputs_url,
        )
        return store, FileRoutes(location.root, signing_key=key)
    if not (settings.aws_access_key_id and settings.aws_secret_access_key):
        raise SettingsError(
            "ORCHESTRATOR_STORAGE_URL is s3://: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    access = S3Access(
        region=settings.aws_region or _DEFAULT_REGION,
        access_key_id=settings.aws_access_key_id,
        secret_access_key=settings.aws_secret_access_key,
        endpoint=settings.aws_endpoint_url,
    )
    try:
        return S3Objects(location, access=access, public_base_url=settings.public_outputs_url), None
    except ValueError as exc:
        raise SettingsError(f"AWS_ENDPOINT_URL or ORCHESTRATOR_PUBLIC_OUTPUTS_URL: {exc}") from exc


def signing_key(settings: Settings, root: Path, *, create: bool = True) -> bytes:
    """The key file-mode input URLs are signed with: the setting, or one kept beside the files.

    Every daemon sharing the root finds the same key there (0600, made once), so a URL
    one daemon signed verifies on another and after a restart. The first daemon writes
    it whole to a temporary file and links it into place, so a second one starting at
    the same moment, or a crash midway, never leaves a short key behind. Without
    `create` (the CLI, which signs nothing) a missing file gives a key of its own.

    Raises:
        SettingsError: the setting or the file holds fewer than 32 bytes.
    """
    if settings.signing_secret is not None:
        return _long_enough(settings.signing_secret.encode(), "ORCHESTRATOR_SIGNING_SECRET")
    path = root / _SIGNING_KEY_FILE
    if not path.exists():
        if not create:
            return secrets.token_hex(32).encode()
        root.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=root, prefix=f"{_SIGNING_KEY_FILE}.")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_hex(32).encode())
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(FileExistsError):  # another daemon linked its own first
                os.link(temporary, path)
        finally:
            Path(temporary).unlink(missing_ok=True)
    return _long_enough(path.read_bytes(), str(path))


def _long_enough(key: bytes, where: str) -> bytes:
    if len(key) < _MIN_SIGNING_KEY_BYTES:
        raise SettingsError(
            f"{where} must hold at least {_MIN_SIGNING_KEY_BYTES} bytes to sign input URLs"
        )
    return key


def download_hosts(settings: Settings) -> tuple[str, ...]:
    """The allow-list: configured hosts, or the providers' own hosts and Replicate's CDN."""
    if settings.download_hosts:
        return settings.download_hosts
    hosts = []
    for name in settings.configured_providers:
        base = settings.kie_api_base if name == "kie" else settings.replicate_api_base
        parts = urllib.parse.urlsplit(base)
        host = parts.hostname or ""
        hosts.append(f"{host}:{parts.port}" if parts.port else host)
    return (*dict.fromkeys(hosts), *_REPLICATE_DELIVERY)


@asynccontextmanager
async def open_outputs(
    settings: Settings, store: ObjectStore, observer: StorageObserver | None = None
) -> AsyncIterator[tuple[Downloader, StoredInputs]]:
    """Output downloads and input checks on their own client, following no redirect.

    No provider credentials ever reach a CDN or an input host.
    """
    limits = httpx.Limits(max_connections=settings.download_concurrency)
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False, limits=limits) as client:
        downloader = Downloader(
            client,
            store,
            allowed_hosts=download_hosts(settings),
            max_bytes=settings.download_max_bytes,
            timeout_s=settings.download_timeout_s,
            concurrency=settings.download_concurrency,
            observer=observer,
        )
        inputs = StoredInputs(
            store,
            client,
            max_bytes=settings.input_max_bytes,
            url_ttl_s=math.ceil(settings.input_url_ttl_s),
            observer=observer,
        )
        yield downloader, inputs


@asynccontextmanager
async def open_callback_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient | None]:
    """The callbacks' own client (None while callbacks are off): no proxies, no redirects.

    A redirect would send the signed ending to a host nobody allow-listed.
    """
    if not settings.callback_hosts:
        yield None
        return
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as client:
        yield client


def callback_sender(
    settings: Settings,
    db: Database,
    client: httpx.AsyncClient | None,
    member: str,
    metrics: Metrics,
) -> CallbackSender:
    """The callbacks' sender; without a client (callbacks off) it gives up what is owed."""
    return CallbackSender(
        db,
        client,
        member=member,
        secret=settings.callback_secret,
        hosts=HostList.parse(settings.callback_hosts),
        policy=CallbackPolicy(
            initial_s=settings.callback_backoff_s,
            window_s=settings.callback_window_s,
            timeout_s=settings.callback_timeout_s,
        ),
        observer=metrics.callbacks,
    )


@asynccontextmanager
async def open_tracing(settings: Settings) -> AsyncIterator[JobTracing]:
    """Job traces as the settings say; off, no-op spans and OpenTelemetry never imported.

    On exit the spans still batched are flushed, for a few seconds at most.
    """
    exporter = settings.traces_to
    if exporter is None:
        yield NullTracing()
        return
    from orchestrator import tracing  # noqa: PLC0415  (imported only when on)

    provider = tracing.provider_for(exporter)
    if provider is None:
        yield NullTracing()
        return
    try:
        yield tracing.OtelTracing.of(provider)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(_TRACE_FLUSH_S):
            await trio.to_thread.run_sync(provider.shutdown, abandon_on_cancel=True)


@asynccontextmanager
async def _given(tracing: JobTracing) -> AsyncIterator[JobTracing]:
    yield tracing


async def ensure_schema(database_url: str) -> None:
    """Migrate on the login's own rights when the schema is behind, before dropping them.

    Raises:
        SchemaNotCurrent: the schema is behind and this login may not migrate it.
    """
    async with open_database(database_url, min_size=1, max_size=1) as db:
        if await db.schema_is_current():
            return
        try:
            await db.migrate()
        except DbError as exc:
            raise SchemaNotCurrent(
                "the schema is not current and this login cannot migrate it"
                f" ({exc}): run `orchestrator migrate` with the owner's login"
            ) from exc


def _sweeper(
    settings: Settings,
    db: Database,
    routed: Routes,
    registry: Registry,
    keeper: LeaseKeeper,
    metrics: Metrics,
) -> Sweeper:
    """Stuck jobs and provider money, on every provider a job may have run on."""
    provider = routed.providers[settings.provider]
    others = routed.providers
    return Sweeper(
        db,
        provider,
        registry,
        others=others,
        stuck_after_s=settings.stuck_after_s,
        cancel_timeout_s=settings.cancel_timeout_s,
        webhook_retention_s=settings.webhook_retention_s,
        event_retention_s=settings.event_retention_s,
        observer=metrics,
        reconciler=Reconciler(
            db,
            provider,
            provider_name=settings.provider,
            window_s=settings.reconcile_window_s,
            limit=settings.reconcile_limit,
            cancel_timeout_s=settings.cancel_timeout_s,
            observer=metrics.upkeep,
            others=others,
        ),
        slots=keeper,
    )


def assemble(
    settings: Settings,
    db: Database,
    provider: Provider,
    downloader: Downloader,
    *,
    providers: Mapping[str, Provider] | None = None,
    tracing: JobTracing | None = None,
    callback_client: httpx.AsyncClient | None = None,
    inputs: InputImages | None = None,
    files: FileRoutes | None = None,
    http_url: str = "",
    metrics: Metrics | None = None,
) -> Daemon:
    """Every part of a daemon, wired; nothing runs yet.

    `providers` are every configured one by name (`provider` alone when None), each
    put behind its circuit breaker here. Callbacks are delivered when the settings
    allow hosts and a `callback_client` is given; without one, those owed in this
    daemon's slots are given up as refused, so none waits for a sender that never comes.
    """
    webhooks_at = webhook_base(settings)
    metrics = metrics or Metrics()
    routed = routes(settings, providers or {settings.provider: provider}, metrics)
    provider = routed.providers[settings.provider]
    limits = capacity(settings)
    keeper = LeaseKeeper(
        db,
        member=settings.member_id or member_id(),
        ttl_s=settings.lease_ttl_s,
        renew_s=settings.lease_renew_s,
        max_moves=settings.max_slot_moves,
        observer=metrics.cluster,
    )
    registry = Registry(
        store=db,
        provider=provider,
        config=actor_config(settings, webhooks_at),
        observer=metrics.jobs,
        outputs=downloader,
        capacity=limits,
        watch=listing_watch(settings, provider, limits, webhooks_at),
        slots=keeper,
        routes=routed,
        tracing=tracing,
        inputs=inputs,
    )
    keeper.on_lost = registry.drop_slots
    keeper.on_hand_over = registry.hand_over
    intake = Intake(
        db,
        registry,
        keeper,
        scan_interval_s=settings.scan_interval_s,
        orphan_grace_s=settings.orphan_grace_s,
        per_user=settings.mailbox_size,
        observer=metrics.intake,
    )
    sweeper = _sweeper(settings, db, routed, registry, keeper, metrics)
    daemon = Daemon(db, registry, intake, sweeper, metrics, keeper)
    daemon.http_url = http_url
    daemon.files = files
    daemon.callbacks = callback_sender(settings, db, callback_client, keeper.member, metrics)
    if settings.lag_target_s:
        daemon.monitor = LoadMonitor(
            limits.gate,
            ceiling=settings.max_in_flight,
            target_s=settings.lag_target_s,
            probe=db.bridge_lag,
        )
    if webhooks_at is not None:
        if not settings.webhook_secret:
            log.warning("webhook.unsigned_accepted", note="anyone can forge deliveries")
        daemon.webhooks = WebhookHandler(
            db,
            registry,
            dict(routed.providers),
            secret=settings.webhook_secret,
            observer=metrics,
        )
    _bind_gauges(daemon)
    return daemon


def _bind_gauges(daemon: Daemon) -> None:
    registry, keeper, monitor = daemon.registry, daemon.keeper, daemon.monitor
    cluster = daemon.metrics.cluster
    cluster.slots_unowned.set_function(lambda: float(keeper.unowned))
    cluster.slots_owned.set_function(lambda: float(len(keeper.slots)))
    daemon.metrics.process.bind(
        actors=lambda: len(registry),
        mailbox_depth=lambda: registry.mailbox_depth,
        jobs_running=lambda: registry.running_jobs,
        listener_connected=lambda: float(daemon.intake.stats.connected),
        db_pool_in_use=lambda: daemon.db.pool_in_use,
        capacity_waiting=lambda: registry.capacity.gate.waiting,
        capacity_limit=lambda: float(registry.capacity.gate.limit or 0),
        loop_lag=lambda: 0.0 if monitor is None else monitor.lag_s,
    )


async def serve(
    settings: Settings,
    database_url: str,
    *,
    handle_signals: bool = True,
    tracing: JobTracing | None = None,
    task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until stopped; `task_status` receives its handle once intake runs.

    Every pooled connection acts as `orchestrator_daemon`, whatever the login. Job
    traces go to `tracing` when given (tests), else where the settings say.
    """
    await ensure_schema(database_url)
    _check_file_urls(settings)
    http = bind_http(settings)
    store, files = object_store(settings, settings.public_url or http.url)
    metrics = Metrics()
    async with (
        open_tracing(settings) if tracing is None else _given(tracing) as traces,
        open_database(
            database_url,
            min_size=2,
            max_size=settings.db_pool_size,
            role=DAEMON_ROLE,
            reserved_size=settings.db_settle_pool_size,
            listen_url=settings.listen_url,
        ) as db,
        open_providers(settings) as providers,
        open_outputs(settings, store, metrics.storage) as (downloader, inputs),
        open_callback_client(settings) as callback_client,
    ):
        daemon = assemble(
            settings,
            db,
            providers[settings.provider],
            downloader,
            providers=providers,
            tracing=traces,
            callback_client=callback_client,
            inputs=inputs,
            files=files,
            http_url=http.url,
            metrics=metrics,
        )
        await _refuse_a_live_twin(db, daemon.keeper.member, settings.lease_renew_s)
        # The web view's thumbnails come from where outputs are served, and nowhere else.
        sample = store.public_url(render_key(uuid.UUID(int=0), 0, "png"))
        images = tuple(dict.fromkeys(("'self'", origin(sample))))
        await _run(
            daemon,
            settings,
            http,
            images=images,
            handle_signals=handle_signals,
            task_status=task_status,
        )


def _check_file_urls(settings: Settings) -> None:
    """Files are served at this daemon's own address: refuse one nobody else can use.

    Bound to every interface (0.0.0.0, ::) without ORCHESTRATOR_PUBLIC_URL, each
    output's `public_url` and each presigned input URL would name 0.0.0.0, and would
    be stored so. Bound to loopback, they work on this host only: a real provider
    cannot fetch an input from there, which is logged once.

    Raises:
        SettingsError: file storage behind a wildcard bind with no public URL.
    """
    if settings.public_url or not isinstance(storage_location(settings), FileLocation):
        return
    host = settings.http_host
    if host in _WILDCARDS:
        raise SettingsError(
            f"ORCHESTRATOR_HTTP_HOST is {host} and outputs are files served by this daemon:"
            " set ORCHESTRATOR_PUBLIC_URL to the address providers and browsers reach it at"
            " (or use ORCHESTRATOR_STORAGE_URL=s3://...)"
        )
    provider = urllib.parse.urlsplit(
        settings.kie_api_base if settings.provider == "kie" else settings.replicate_api_base
    ).hostname
    if provider not in _LOOPBACK:
        log.warning(
            "daemon.inputs_unreachable",
            note="input images are served at a loopback URL the provider cannot fetch;"
            " set ORCHESTRATOR_PUBLIC_URL or use S3 storage",
        )


async def _refuse_a_live_twin(db: Database, member: str, renew_s: float) -> None:
    """Two processes under one member id would take each other's slots: refuse to start.

    A member that heartbeated within the last two renewals is alive. One that stopped
    (a crash, then a restart under the same id) is not: the restart takes its slots
    back in its first round instead of waiting for their leases to expire.

    Raises:
        SettingsError: a live daemon already has this id (a copied ORCHESTRATOR_MEMBER_ID).
    """
    for row in await db.cluster_members():
        if row.member_id == member and row.alive and row.heartbeat_age_s < 2 * renew_s:
            raise SettingsError(
                f"ORCHESTRATOR_MEMBER_ID {member!r} belongs to a daemon that is alive"
                f" (heartbeat {row.heartbeat_age_s:.1f} s ago): give each daemon its own"
            )


async def _run(
    daemon: Daemon,
    settings: Settings,
    http: BoundHttp,
    *,
    images: tuple[str, ...],
    handle_signals: bool,
    task_status: trio.TaskStatus[Daemon],
) -> None:
    keeper, registry, metrics = daemon.keeper, daemon.registry, daemon.metrics
    ui = None
    if settings.ui_enabled:
        ui = WebUI(daemon.db, show_prompts=settings.ui_show_prompts, image_sources=images)
    app = HttpApp(
        metrics=metrics,
        readiness=daemon.readiness,
        webhooks=daemon.webhooks,
        ui=ui,
        files=daemon.files,
    )
    async with trio.open_nursery() as root:
        await root.start(_serve_http, app, http)
        keeper.info.update(pid=os.getpid(), http_url=daemon.http_url, version=version())
        await root.start(registry.run)
        leases = trio.CancelScope()

        async def run_leases(*, task_status: trio.TaskStatus[None]) -> None:
            with leases:
                await keeper.run(task_status=task_status)

        await root.start(run_leases)
        services = trio.CancelScope()

        async def run_services(*, task_status: trio.TaskStatus[None]) -> None:
            with services:
                async with trio.open_nursery() as nursery:
                    if daemon.monitor is not None:
                        nursery.start_soon(daemon.monitor.run)
                    if registry.capacity.admissions is not None:
                        pacer = ServicePacer(
                            registry.capacity.admissions,
                            cpu_clock=time.process_time,
                            finished=metrics.jobs.finished_count,
                        )
                        nursery.start_soon(pacer.run)
                    await nursery.start(daemon.intake.run)
                    nursery.start_soon(daemon.sweeper.run)
                    if daemon.callbacks is not None:
                        await nursery.start(daemon.callbacks.run)
                    nursery.start_soon(
                        functools.partial(
                            run_auditor,
                            daemon.db,
                            metrics.upkeep,
                            interval_s=settings.audit_interval_s,
                        )
                    )
                    task_status.started()

        await root.start(run_services)
        if handle_signals:
            root.start_soon(_stop_on_signal, daemon)
        log.info(
            "daemon.started",
            deadline_s=settings.job_deadline_s,
            member=keeper.member,
            slots=len(keeper.slots),
        )
        task_status.started(daemon)
        await daemon.wait_stopped()
        stopping = trio.current_time()
        services.cancel()
        left = await _hand_over(daemon, settings.grace_s)
        leases.cancel()
        with trio.move_on_after(settings.cancel_timeout_s, shield=True):
            try:
                released = await keeper.leave()
            except DbError as exc:
                log.warning("lease.leave_failed", error=str(exc), note="the leases expire")
            else:
                metrics.cluster.handed_over(trio.current_time() - stopping)
                log.info("lease.left", slots=released)
        root.cancel_scope.cancel()
    log.info("daemon.stopped", jobs_left_for_recovery=left)


async def _hand_over(daemon: Daemon, grace_s: float) -> int:
    """Stop running jobs for a stop: hand them over when others are alive, else drain.

    Returns how many jobs were left in flight for the slots' next owner.
    """
    try:
        members, _unowned = await daemon.db.live_members()
    except DbError:
        members = []
    others = [member for member in members if member != daemon.keeper.member]
    if others:
        log.info("daemon.handing_over", members=len(others))
        return await daemon.registry.drop_all()
    log.info("daemon.stopping", grace_s=grace_s)
    return await daemon.registry.drain(grace_s)


@attrs.frozen
class BoundHttp:
    """The daemon's HTTP socket, bound before anything is built.

    So its URL is known up front (file-mode output and input URLs point at it), and a
    port in use fails the start before anything else does.
    """

    fd: int
    url: str


def bind_http(settings: Settings) -> BoundHttp:
    """Bind the HTTP port (0: any free one) and hand its descriptor to hypercorn later.

    Raises:
        SettingsError: the address cannot be bound.
    """
    host = settings.http_host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, settings.http_port))
    except OSError as exc:
        sock.close()
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        raise SettingsError(
            f"ORCHESTRATOR_HTTP_PORT: cannot listen on {shown}:{settings.http_port}: "
            f"{exc.strerror or exc}"
        ) from exc
    bound_host, port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
    return BoundHttp(fd=sock.detach(), url=f"http://{shown}:{port}")


async def _serve_http(app: HttpApp, http: BoundHttp, *, task_status: trio.TaskStatus[str]) -> None:
    config = hypercorn.config.Config()
    config.bind = [f"fd://{http.fd}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("orchestrator.http")
    config.graceful_timeout = 0.5
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(hypercorn.trio.serve, app, config))
        log.info("http.listening", url=http.url)
        task_status.started(http.url)


async def _stop_on_signal(daemon: Daemon) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("daemon.signal", signal=signal.Signals(signum).name)
            daemon.stop()
            return
