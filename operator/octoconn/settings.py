"""Operator settings, read from ``OCTOCONN_*`` environment variables (see the README's Settings table).

Construction does no I/O: credential files are read only when ``infisical_credentials()`` is called, so a
wrong path is reported as a clear error at start-up rather than as a crash on import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class SettingsError(ValueError):
    """A setting is missing or contradicts another; the message says which variable to set."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OCTOCONN_", extra="ignore", frozen=True)

    infisical_url: str = Field(
        "https://app.infisical.com", description="Base URL of the Infisical instance used by default."
    )
    auth_method: Literal["universal", "kubernetes"] = Field(
        "universal", description="How the operator logs in to Infisical: Universal Auth or Kubernetes Auth."
    )
    # Universal Auth: values directly, or files (mounted Secrets); files win when both are set.
    client_id: SecretStr | None = Field(None, description="Universal Auth client id.")
    client_secret: SecretStr | None = Field(None, description="Universal Auth client secret.")
    client_id_file: Path | None = Field(None, description="File holding the Universal Auth client id.")
    client_secret_file: Path | None = Field(None, description="File holding the Universal Auth client secret.")
    # Kubernetes Auth: the identity id, and which ServiceAccount's token to mint.
    kubernetes_identity_id: str | None = Field(None, description="Infisical identity id for Kubernetes Auth.")
    service_account: str | None = Field(
        None, description="namespace/name of the ServiceAccount whose token is sent to Infisical (Kubernetes Auth)."
    )
    token_audience: str | None = Field(None, description="Audience requested for the ServiceAccount token.")
    token_ttl_seconds: int = Field(600, ge=600, description="Lifetime of the ServiceAccount token (TokenRequest).")

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated namespaces to watch; empty means all namespaces."
    )
    resync_interval_seconds: float = Field(
        600.0, gt=0, description="Mean interval of the periodic re-check (jittered by +-10%)."
    )
    sync_check_interval_seconds: float = Field(
        60.0,
        gt=0,
        description="Mean interval at which a settled secret sync reads Infisical's latest run back, whoever started "
        "it (jittered by +-10%); each check is one paced Infisical read.",
    )
    max_workers: int = Field(20, ge=1, description="How many resources reconcile at the same time.")
    infisical_writes_per_minute: int = Field(
        120, ge=1, description="Shared pace for Infisical writes (logins, creates, updates, deletes)."
    )
    infisical_reads_per_minute: int = Field(
        50, ge=0, description="Shared pace for Infisical reads (Cloud allows about 60 a minute); 0 turns it off."
    )
    retry_backoff_cap_seconds: float = Field(300.0, gt=0, description="Upper bound of the 5xx/network backoff.")
    auth_retry_seconds: float = Field(300.0, gt=0, description="Retry interval after 401/403 from either service.")

    allow_http: bool = Field(False, description="Allow sending API keys to http:// Octopus URLs.")
    octopus_ca_bundle: Path | None = Field(
        None, description="PEM bundle trusted for Octopus TLS, besides the system's."
    )
    octopus_insecure_skip_verify: bool = Field(False, description="Do not verify Octopus TLS certificates (unsafe).")
    octopus_timeout_seconds: float = Field(10.0, gt=0, description="Timeout of one call to Octopus.")
    infisical_timeout_seconds: float = Field(15.0, gt=0, description="Timeout of one call to Infisical.")

    # Kopf peering between replicas (not used with --standalone). The replica with the highest priority reconciles;
    # the others wait until its keep-alive is older than its lifetime, so the lifetime bounds the failover time.
    peering_name: str = Field(
        "octoconn",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=253,
        description="Name of the KopfPeering (per watched namespace) or ClusterKopfPeering the replicas share.",
    )
    peering_lifetime_seconds: int = Field(
        20, ge=10, le=3600, description="How long a replica's keep-alive counts; bounds the failover time."
    )
    peering_priority: int | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        description="This replica's peering priority; unset draws a random one at start, so identical pods differ.",
    )

    metrics_port: int = Field(
        8081, ge=0, le=65535, description="Port of the Prometheus metrics endpoint; 0 turns the endpoint off."
    )
    metrics_path: str = Field("/metrics", description="HTTP path of the Prometheus metrics endpoint.")
    metrics_bind_address: str = Field(
        "0.0.0.0",  # noqa: S104 - the endpoint must be reachable from Prometheus in other pods
        description="Address the metrics endpoint listens on.",
    )
    key_expiry_warning_days: float = Field(
        14.0, ge=0, description="Warn (Event, condition reason, metric) this many days before an API key expires."
    )

    log_format: Literal["plain", "json"] = Field("plain", description="Log line format.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("metrics_path")
    @classmethod
    def _check_metrics_path(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise ValueError("OCTOCONN_METRICS_PATH must be a URL path starting with / (e.g. /metrics)")
        return value

    @field_validator("infisical_url")
    @classmethod
    def _strip_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("https://", "http://")):
            raise ValueError("OCTOCONN_INFISICAL_URL must start with https:// or http://")
        return value

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        if self.auth_method == "kubernetes":
            if not self.kubernetes_identity_id:
                raise ValueError("OCTOCONN_AUTH_METHOD=kubernetes needs OCTOCONN_KUBERNETES_IDENTITY_ID")
            if not self.service_account or "/" not in self.service_account:
                raise ValueError("OCTOCONN_AUTH_METHOD=kubernetes needs OCTOCONN_SERVICE_ACCOUNT=namespace/name")
        return self

    def universal_credentials(self) -> tuple[str, str]:
        """Return (client id, client secret), reading the files now. Raises SettingsError with what to set."""
        client_id = _read(self.client_id_file, self.client_id, "OCTOCONN_CLIENT_ID")
        client_secret = _read(self.client_secret_file, self.client_secret, "OCTOCONN_CLIENT_SECRET")
        return client_id, client_secret

    def service_account_ref(self) -> tuple[str, str]:
        assert self.service_account is not None
        namespace, _, name = self.service_account.partition("/")
        return namespace, name


def load_settings() -> Settings:
    """Read the settings from the environment; raise SettingsError naming each bad variable.

    pydantic's own message echoes the input values, which may include a client secret, so it is rebuilt here from
    the variable names and the reasons only.
    """
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            variable = "OCTOCONN_" + "_".join(str(part) for part in error["loc"]).upper() if error["loc"] else ""
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{variable}: {message}" if variable else message)
        raise SettingsError("; ".join(problems)) from None


def _read(path: Path | None, value: SecretStr | None, variable: str) -> str:
    if path is not None:
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise SettingsError(f"{variable}_FILE={path} cannot be read: {exc.strerror}") from None
        if not text:
            raise SettingsError(f"{variable}_FILE={path} is empty")
        return text
    if value is not None and value.get_secret_value().strip():
        return value.get_secret_value().strip()
    raise SettingsError(f"Universal Auth needs {variable} or {variable}_FILE")
