"""One frozen settings value, read once at the composition root.

Nothing else in the orchestrator reads the environment: the CLI builds a
`Settings` from environment variables and flags and passes it down, so every
component's configuration is visible in one place and in its tests.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from orchestrator.core import COST_MULTIPLIERS, RESERVED_PARAMS, default_allowed

DEFAULT_HOME: Final = Path("~/.local/share/orchestrator")


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise SettingsError(f"{attribute.name} must be a positive number, got {value!r}")


def _rate(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """A rate budget: 0 turns it off, else a positive number per second."""
    if not (value >= 0 and math.isfinite(value)):
        raise SettingsError(f"{attribute.name} must be 0 (off) or a positive rate, got {value!r}")


_MAX_RETRIES: Final = 10


def _retries(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    """Each retry is paid for upstream: 0 (off) to a small bound."""
    if not 0 <= value <= _MAX_RETRIES:
        raise SettingsError(f"{attribute.name} must be 0 (off) to {_MAX_RETRIES}, got {value!r}")


def _lower(value: str) -> str:
    return value.lower()


def _port(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:  # noqa: PLR2004
        raise SettingsError(f"{attribute.name} must be a TCP port (0-65535), got {value}")


def _input_names(
    _instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...] | None
) -> None:
    if value is None:
        return
    if refused := sorted(set(value) & (RESERVED_PARAMS | COST_MULTIPLIERS)):
        raise SettingsError(
            f"{attribute.name} may not allow {', '.join(refused)}: the job's num_outputs "
            "and price decide how many images are made"
        )


MAX_INPUT_URL_TTL_S: Final = 900.0


def _input_url_ttl(_instance: object, _attribute: object, value: float) -> None:
    """Presigned input URLs live minutes: long enough for the provider, no longer."""
    if not (0 < value <= MAX_INPUT_URL_TTL_S):
        raise SettingsError(
            f"ORCHESTRATOR_INPUT_URL_TTL must be above 0 and at most {MAX_INPUT_URL_TTL_S:g} s,"
            f" got {value!r}"
        )


def _event_retention(_instance: object, _attribute: object, value: float) -> None:
    if not (value >= 60 and math.isfinite(value)):  # noqa: PLR2004  (prune_job_events_v1's floor)
        raise SettingsError(f"ORCHESTRATOR_EVENT_RETENTION must be at least 60 s, got {value!r}")


PROVIDER_NAMES: Final = ("replicate", "kie")


def _provider_names(_instance: object, _attribute: object, value: tuple[str, ...]) -> None:
    if unknown := sorted(set(value) - set(PROVIDER_NAMES)):
        raise SettingsError(
            f"ORCHESTRATOR_PROVIDERS: unknown {', '.join(unknown)}; known: "
            + ", ".join(PROVIDER_NAMES)
        )


MIN_WEBHOOK_SECRET_BYTES: Final = 24


def _signing_secret(variable: str) -> Callable[[object, object, str | None], None]:
    """A validator for a Standard Webhooks secret held in `variable`."""

    def check(_instance: object, _attribute: object, value: str | None) -> None:
        _whsec(variable, value)

    return check


def _whsec(variable: str, value: str | None) -> None:
    """A Standard Webhooks secret, strong enough to sign with; never echoed back."""
    if value is None:
        return
    problem = (
        f"{variable} must be 'whsec_' and the base64 of at least"
        f" {MIN_WEBHOOK_SECRET_BYTES} random bytes"
    )
    if not value.startswith("whsec_"):
        raise SettingsError(problem)
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise SettingsError(f"{problem}: it is not base64") from None
    if len(key) < MIN_WEBHOOK_SECRET_BYTES:
        raise SettingsError(f"{problem}: it holds {len(key)}")


@attrs.frozen(kw_only=True)
class Settings:
    """Everything the daemon and the CLI can be told; the README's table mirrors it."""

    database_url: str | None = attrs.field(default=None, repr=False)
    listen_url: str | None = attrs.field(default=None, repr=False)
    home: Path = DEFAULT_HOME
    provider: str = attrs.field(
        default="replicate", validator=attrs.validators.in_(("replicate", "kie"))
    )
    # Every provider this daemon runs jobs on; () = `provider` alone. `provider` is the
    # default, `fallback_provider` where new jobs go while the default's breaker is open.
    providers: tuple[str, ...] = attrs.field(default=(), validator=_provider_names)
    fallback_provider: str | None = None
    breaker_threshold: int = attrs.field(default=5, validator=_positive)
    breaker_window_s: float = attrs.field(default=30.0, validator=_positive)
    breaker_cooldown_s: float = attrs.field(default=15.0, validator=_positive)
    breaker_max_cooldown_s: float = attrs.field(default=300.0, validator=_positive)
    replicate_api_base: str = "https://api.replicate.com"
    replicate_api_token: str | None = attrs.field(default=None, repr=False)
    replicate_model: str = "black-forest-labs/flux-schnell"
    kie_api_base: str = "https://api.kie.ai"
    kie_api_token: str | None = attrs.field(default=None, repr=False)
    kie_model: str = "google/nano-banana"
    # None: the documented inputs of the configured model (orchestrator.core.default_allowed).
    params_allowed: tuple[str, ...] | None = attrs.field(default=None, validator=_input_names)
    output_concurrency: int = attrs.field(default=5, validator=_positive)
    storage_root: Path | None = None
    # Where outputs and inputs live: file:///path (default: <storage_root or home>) or
    # s3://bucket[/prefix], with the standard AWS_* variables below.
    storage_url: str | None = None
    public_outputs_url: str | None = None
    aws_endpoint_url: str | None = None
    aws_access_key_id: str | None = attrs.field(default=None, repr=False)
    aws_secret_access_key: str | None = attrs.field(default=None, repr=False)
    aws_region: str | None = None
    # Signs file-mode input URLs; unset, a key kept beside the files (0600) is used.
    signing_secret: str | None = attrs.field(default=None, repr=False)
    input_hosts: tuple[str, ...] = ()
    input_max_bytes: int = attrs.field(default=10 * 1024 * 1024, validator=_positive)
    input_url_ttl_s: float = attrs.field(default=300.0, validator=_input_url_ttl)
    callback_hosts: tuple[str, ...] = ()
    callback_secret: str | None = attrs.field(
        default=None, repr=False, validator=_signing_secret("ORCHESTRATOR_CALLBACK_SECRET")
    )
    callback_window_s: float = attrs.field(default=86400.0, validator=_positive)
    callback_backoff_s: float = attrs.field(default=1.0, validator=_positive)
    callback_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    event_retention_s: float = attrs.field(default=7 * 86400.0, validator=_event_retention)
    download_hosts: tuple[str, ...] = ()
    download_max_bytes: int = attrs.field(default=20 * 1024 * 1024, validator=_positive)
    download_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    download_concurrency: int = attrs.field(default=32, validator=_positive)
    provider_connections: int = attrs.field(default=100, validator=_positive)
    job_deadline_s: float = attrs.field(default=120.0, validator=_positive)
    poll_initial_s: float = attrs.field(default=0.5, validator=_positive)
    poll_max_s: float = attrs.field(default=5.0, validator=_positive)
    poll_multiplier: float = attrs.field(default=1.6, validator=_positive)
    cancel_timeout_s: float = attrs.field(default=5.0, validator=_positive)
    # Extra predictions per output after a transient upstream failure; 0 turns retries off.
    prediction_retries: int = attrs.field(default=2, validator=_retries)
    retry_backoff_s: float = attrs.field(default=1.0, validator=_positive)
    actor_idle_s: float = attrs.field(default=60.0, validator=_positive)
    mailbox_size: int = attrs.field(default=256, validator=_positive)
    scan_interval_s: float = attrs.field(default=5.0, validator=_positive)
    stuck_after_s: float = attrs.field(default=1800.0, validator=_positive)
    orphan_grace_s: float = attrs.field(default=60.0, validator=_positive)
    grace_s: float = attrs.field(default=30.0, validator=_positive)
    audit_interval_s: float = attrs.field(default=300.0, validator=_positive)
    webhook_retention_s: float = attrs.field(default=3 * 86400.0, validator=_positive)
    reconcile_window_s: float = attrs.field(default=86400.0, validator=_positive)
    reconcile_limit: int = attrs.field(default=500, validator=_positive)
    webhook_secret: str | None = attrs.field(
        default=None, repr=False, validator=_signing_secret("ORCHESTRATOR_WEBHOOK_SECRET")
    )
    public_url: str | None = None
    accept_unsigned_webhooks: bool = False
    http_host: str = "127.0.0.1"
    http_port: int = attrs.field(default=8080, validator=_port)
    # The read-only web view at /ui on the HTTP port; prompts and params hidden unless asked.
    ui_enabled: bool = True
    ui_show_prompts: bool = False
    webhook_poll_s: float = attrs.field(default=30.0, validator=_positive)
    list_poll_s: float = attrs.field(default=2.0, validator=_rate)
    db_pool_size: int = attrs.field(default=10, validator=_positive)
    max_in_flight: int = attrs.field(default=10_000, validator=_positive)
    lag_target_s: float = attrs.field(default=0.1, validator=_rate)
    create_rate: float = attrs.field(default=0.0, validator=_rate)
    poll_rate: float = attrs.field(default=0.0, validator=_rate)
    db_settle_pool_size: int = attrs.field(default=4, validator=_positive)
    lease_ttl_s: float = attrs.field(default=15.0, validator=_positive)
    lease_renew_s: float = attrs.field(default=3.0, validator=_positive)
    max_slot_moves: int = attrs.field(default=64, validator=_positive)
    member_id: str | None = None
    # Traces: on with ORCHESTRATOR_TRACING, or when OTEL_TRACES_EXPORTER names an exporter
    # (`otlp`, the default once on, needs the `otlp` extra; `console`; `none` keeps it off).
    tracing: bool = False
    traces_exporter: str | None = attrs.field(
        default=None,
        converter=attrs.converters.optional(_lower),
        validator=attrs.validators.optional(attrs.validators.in_(("otlp", "console", "none"))),
    )
    log_level: str = attrs.field(
        default="info",
        converter=_lower,
        validator=attrs.validators.in_(("debug", "info", "warning", "error")),
    )
    log_format: str = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto", "json", "console"))
    )

    def __attrs_post_init__(self) -> None:
        configured = self.configured_providers
        if self.providers and self.provider not in self.providers:
            raise SettingsError(
                f"ORCHESTRATOR_PROVIDERS must include ORCHESTRATOR_PROVIDER ({self.provider})"
            )
        if self.fallback_provider is not None and (
            self.fallback_provider not in configured or self.fallback_provider == self.provider
        ):
            raise SettingsError(
                "ORCHESTRATOR_FALLBACK_PROVIDER must be another of ORCHESTRATOR_PROVIDERS"
                f" ({', '.join(configured)}), got {self.fallback_provider!r}"
            )
        if self.callback_hosts and not self.callback_secret:
            raise SettingsError(
                "ORCHESTRATOR_CALLBACK_HOSTS turns callbacks on: set ORCHESTRATOR_CALLBACK_SECRET"
                " (whsec_ and the base64 of 24 random bytes or more) to sign them"
            )
        if self.lease_renew_s >= self.lease_ttl_s / 2:
            raise SettingsError(
                "ORCHESTRATOR_LEASE_RENEW must be under half of ORCHESTRATOR_LEASE_TTL, "
                f"got {self.lease_renew_s:g} s for a {self.lease_ttl_s:g} s lease"
            )

    @property
    def configured_providers(self) -> tuple[str, ...]:
        """The providers this daemon runs jobs on, the default one first."""
        rest = tuple(name for name in self.providers if name != self.provider)
        return (self.provider, *rest)

    @property
    def model(self) -> str:
        return self.model_of(self.provider)

    def model_of(self, provider: str) -> str:
        return self.kie_model if provider == "kie" else self.replicate_model

    @property
    def traces_to(self) -> str | None:
        """The span exporter to use, or None when tracing is off."""
        if self.traces_exporter == "none" or not (self.tracing or self.traces_exporter):
            return None
        return self.traces_exporter or "otlp"

    @property
    def allowed_params(self) -> frozenset[str]:
        """The params keys a job may pass to the default provider's model."""
        return self.allowed_params_of(self.provider)

    def allowed_params_of(self, provider: str) -> frozenset[str]:
        """The params keys a job may pass to one provider's model.

        `ORCHESTRATOR_PARAMS_ALLOWED`, when set, holds for every provider.
        """
        if self.params_allowed is not None:
            return frozenset(self.params_allowed)
        return default_allowed(provider, self.model_of(provider))


def _boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


def _hosts(raw: str) -> tuple[str, ...]:
    return tuple(host.strip() for host in raw.split(",") if host.strip())


def _names(raw: str) -> tuple[str, ...]:
    """A comma list of input names; `none` allows no params at all."""
    if raw.strip().lower() == "none":
        return ()
    return _hosts(raw)


# environment variable -> (field, parser)
_ENV: Final[Mapping[str, tuple[str, Callable[[str], object]]]] = {
    "DATABASE_URL": ("database_url", str),
    "ORCHESTRATOR_LISTEN_URL": ("listen_url", str),
    "ORCHESTRATOR_HOME": ("home", Path),
    "ORCHESTRATOR_PROVIDER": ("provider", str),
    "ORCHESTRATOR_PROVIDERS": ("providers", _hosts),
    "ORCHESTRATOR_FALLBACK_PROVIDER": ("fallback_provider", str),
    "ORCHESTRATOR_BREAKER_THRESHOLD": ("breaker_threshold", int),
    "ORCHESTRATOR_BREAKER_WINDOW": ("breaker_window_s", float),
    "ORCHESTRATOR_BREAKER_COOLDOWN": ("breaker_cooldown_s", float),
    "ORCHESTRATOR_BREAKER_MAX_COOLDOWN": ("breaker_max_cooldown_s", float),
    "REPLICATE_API_BASE": ("replicate_api_base", str),
    "REPLICATE_API_TOKEN": ("replicate_api_token", str),
    "ORCHESTRATOR_MODEL": ("replicate_model", str),
    "KIE_API_BASE": ("kie_api_base", str),
    "KIE_API_TOKEN": ("kie_api_token", str),
    "ORCHESTRATOR_KIE_MODEL": ("kie_model", str),
    "ORCHESTRATOR_PARAMS_ALLOWED": ("params_allowed", _names),
    "ORCHESTRATOR_OUTPUT_CONCURRENCY": ("output_concurrency", int),
    "ORCHESTRATOR_STORAGE_ROOT": ("storage_root", Path),
    "ORCHESTRATOR_STORAGE_URL": ("storage_url", str),
    "ORCHESTRATOR_PUBLIC_OUTPUTS_URL": ("public_outputs_url", str),
    "AWS_ENDPOINT_URL": ("aws_endpoint_url", str),
    "AWS_ACCESS_KEY_ID": ("aws_access_key_id", str),
    "AWS_SECRET_ACCESS_KEY": ("aws_secret_access_key", str),
    "AWS_REGION": ("aws_region", str),
    "ORCHESTRATOR_SIGNING_SECRET": ("signing_secret", str),
    "ORCHESTRATOR_INPUT_HOSTS": ("input_hosts", _hosts),
    "ORCHESTRATOR_INPUT_MAX_BYTES": ("input_max_bytes", int),
    "ORCHESTRATOR_INPUT_URL_TTL": ("input_url_ttl_s", float),
    "ORCHESTRATOR_CALLBACK_HOSTS": ("callback_hosts", _hosts),
    "ORCHESTRATOR_CALLBACK_SECRET": ("callback_secret", str),
    "ORCHESTRATOR_CALLBACK_WINDOW": ("callback_window_s", float),
    "ORCHESTRATOR_CALLBACK_BACKOFF": ("callback_backoff_s", float),
    "ORCHESTRATOR_CALLBACK_TIMEOUT": ("callback_timeout_s", float),
    "ORCHESTRATOR_EVENT_RETENTION": ("event_retention_s", float),
    "ORCHESTRATOR_DOWNLOAD_HOSTS": ("download_hosts", _hosts),
    "ORCHESTRATOR_DOWNLOAD_MAX_BYTES": ("download_max_bytes", int),
    "ORCHESTRATOR_DOWNLOAD_TIMEOUT": ("download_timeout_s", float),
    "ORCHESTRATOR_DOWNLOAD_CONCURRENCY": ("download_concurrency", int),
    "ORCHESTRATOR_PROVIDER_CONNECTIONS": ("provider_connections", int),
    "ORCHESTRATOR_JOB_DEADLINE": ("job_deadline_s", float),
    "ORCHESTRATOR_POLL_INITIAL": ("poll_initial_s", float),
    "ORCHESTRATOR_POLL_MAX": ("poll_max_s", float),
    "ORCHESTRATOR_CANCEL_TIMEOUT": ("cancel_timeout_s", float),
    "ORCHESTRATOR_PREDICTION_RETRIES": ("prediction_retries", int),
    "ORCHESTRATOR_RETRY_BACKOFF": ("retry_backoff_s", float),
    "ORCHESTRATOR_ACTOR_IDLE": ("actor_idle_s", float),
    "ORCHESTRATOR_MAILBOX_SIZE": ("mailbox_size", int),
    "ORCHESTRATOR_SCAN_INTERVAL": ("scan_interval_s", float),
    "ORCHESTRATOR_STUCK_AFTER": ("stuck_after_s", float),
    "ORCHESTRATOR_ORPHAN_GRACE": ("orphan_grace_s", float),
    "ORCHESTRATOR_GRACE": ("grace_s", float),
    "ORCHESTRATOR_AUDIT_INTERVAL": ("audit_interval_s", float),
    "ORCHESTRATOR_WEBHOOK_RETENTION": ("webhook_retention_s", float),
    "ORCHESTRATOR_RECONCILE_WINDOW": ("reconcile_window_s", float),
    "ORCHESTRATOR_RECONCILE_LIMIT": ("reconcile_limit", int),
    "ORCHESTRATOR_WEBHOOK_SECRET": ("webhook_secret", str),
    "ORCHESTRATOR_PUBLIC_URL": ("public_url", str),
    "ORCHESTRATOR_ACCEPT_UNSIGNED_WEBHOOKS": ("accept_unsigned_webhooks", _boolean),
    "ORCHESTRATOR_HTTP_HOST": ("http_host", str),
    "ORCHESTRATOR_HTTP_PORT": ("http_port", int),
    "ORCHESTRATOR_UI": ("ui_enabled", _boolean),
    "ORCHESTRATOR_UI_SHOW_PROMPTS": ("ui_show_prompts", _boolean),
    "ORCHESTRATOR_DB_POOL_SIZE": ("db_pool_size", int),
    "ORCHESTRATOR_WEBHOOK_POLL": ("webhook_poll_s", float),
    "ORCHESTRATOR_LIST_POLL": ("list_poll_s", float),
    "ORCHESTRATOR_MAX_IN_FLIGHT": ("max_in_flight", int),
    "ORCHESTRATOR_LAG_TARGET": ("lag_target_s", float),
    "ORCHESTRATOR_CREATE_RATE": ("create_rate", float),
    "ORCHESTRATOR_POLL_RATE": ("poll_rate", float),
    "ORCHESTRATOR_DB_SETTLE_POOL_SIZE": ("db_settle_pool_size", int),
    "ORCHESTRATOR_LEASE_TTL": ("lease_ttl_s", float),
    "ORCHESTRATOR_LEASE_RENEW": ("lease_renew_s", float),
    "ORCHESTRATOR_MAX_SLOT_MOVES": ("max_slot_moves", int),
    "ORCHESTRATOR_MEMBER_ID": ("member_id", str),
    "ORCHESTRATOR_TRACING": ("tracing", _boolean),
    "OTEL_TRACES_EXPORTER": ("traces_exporter", str),
    "ORCHESTRATOR_LOG_LEVEL": ("log_level", str),
    "ORCHESTRATOR_LOG_FORMAT": ("log_format", str),
}


def environment_variables() -> Mapping[str, str]:
    """Each variable and the field it sets, for the README and `--help`."""
    return {name: field for name, (field, _) in _ENV.items()}


def from_env(env: Mapping[str, str], **overrides: object) -> Settings:
    """Build settings from the environment, then flags (`overrides`, None = not given).

    Raises:
        SettingsError: a value does not parse or is out of range; names the variable.
    """
    values: dict[str, object] = {}
    for name, (field, parse) in _ENV.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        try:
            values[field] = parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{name}={raw!r} is not a valid {parse.__name__}") from exc
    values.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise SettingsError(str(exc)) from exc
