"""Domain errors raised by the clients and the reconcile logic.

Every error carries the condition ``reason`` it becomes in status and a ``retry`` class that says how the
handlers should wait before trying again. Messages are shown to users in status and Events, so they must say
what is wrong and what to do, and they must never contain an API key, a client secret or an access token.
Mapping to ``kopf.TemporaryError``/``kopf.PermanentError`` happens in ``handlers`` only.
"""

from __future__ import annotations

from enum import Enum


class Retry(Enum):
    """How soon a failed reconcile should be tried again."""

    WAIT_FOR_CHANGE = "wait"  # bad input: only a spec or Secret change can fix it (long safety-net retry)
    SLOW = "slow"  # credentials refused: retry rarely, the user probably has to act
    BACKOFF = "backoff"  # transient (5xx, network): exponential backoff with jitter and a cap
    RATE_LIMITED = "rate-limited"  # 429: wait exactly as long as the server asked


class OctoconnError(Exception):
    """Base class. ``str(err)`` is the user-facing message."""

    reason: str = "Error"
    retry: Retry = Retry.BACKOFF

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


# --- input problems (the user must change the spec or the Secret) -----------------------------------------------
class InvalidSpec(OctoconnError):
    reason = "InvalidSpec"
    retry = Retry.WAIT_FOR_CHANGE


class InvalidInstanceUrl(InvalidSpec):
    reason = "InvalidInstanceUrl"


class InsecureInstanceUrl(InvalidSpec):
    """A plain-http instance URL while the operator does not allow sending keys over http."""

    reason = "InsecureInstanceUrl"


class SecretNotFound(OctoconnError):
    reason = "SecretNotFound"
    retry = Retry.WAIT_FOR_CHANGE


class SecretKeyMissing(OctoconnError):
    reason = "SecretKeyMissing"
    retry = Retry.WAIT_FOR_CHANGE


class MalformedApiKey(OctoconnError):
    """The Secret's value does not look like an Octopus API key (``API-`` + uppercase letters and digits)."""

    reason = "MalformedApiKey"
    retry = Retry.WAIT_FOR_CHANGE


# --- Octopus -----------------------------------------------------------------------------------------------------
class OctopusError(OctoconnError):
    reason = "OctopusError"


class InvalidApiKey(OctopusError):
    """401: the key is wrong, revoked or expired."""

    reason = "InvalidApiKey"
    retry = Retry.SLOW


class OctopusPermissionDenied(OctopusError):
    """403: the key is valid but lacks a permission."""

    reason = "OctopusPermissionDenied"
    retry = Retry.SLOW


class NotAnOctopusServer(OctopusError):
    """The URL answers, but not like an Octopus server (no valid ``/api`` root document)."""

    reason = "NotAnOctopusServer"
    retry = Retry.WAIT_FOR_CHANGE


class OctopusRedirected(OctopusError):
    """The server answered with a redirect: the key is not sent on; the user should use the final URL."""

    reason = "OctopusRedirected"
    retry = Retry.WAIT_FOR_CHANGE


class OctopusTLSError(OctopusError):
    reason = "OctopusTLSError"
    retry = Retry.SLOW


class OctopusUnreachable(OctopusError):
    """Network errors, timeouts, 5xx and 503-while-starting."""

    reason = "OctopusUnreachable"
    retry = Retry.BACKOFF


class OctopusRateLimited(OctopusError):
    reason = "OctopusRateLimited"
    retry = Retry.RATE_LIMITED


class OctopusUnexpectedResponse(OctopusError):
    """The server's anonymous ``/api`` root is Octopus, but ``/api/users/me`` answered oddly (404, non-JSON...).

    Usually a reverse proxy in front of Octopus rewriting or blocking paths; may be transient, so back off.
    """

    reason = "OctopusUnexpectedResponse"
    retry = Retry.BACKOFF


# --- Infisical ---------------------------------------------------------------------------------------------------
class InfisicalError(OctoconnError):
    reason = "InfisicalError"

    def __init__(self, message: str, *, status_code: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status_code = status_code


class InfisicalAuthFailed(InfisicalError):
    """Login refused, token refused (401), or the identity lacks permission (403)."""

    reason = "InfisicalAuthFailed"
    retry = Retry.SLOW


class InfisicalForbidden(InfisicalAuthFailed):
    """403: the identity is known but may not do this."""


class InfisicalProjectUnavailable(InfisicalError):
    """403 on a request naming an Infisical project: it does not exist, or the identity is no member of it."""

    reason = "InfisicalProjectUnavailable"
    retry = Retry.SLOW


class InfisicalRejected(InfisicalError):
    """400/422: Infisical refused the request (validation, its own Octopus credential check, SSRF guard...)."""

    reason = "InfisicalRejected"
    retry = Retry.WAIT_FOR_CHANGE


class NameConflict(InfisicalRejected):
    """The connection name is taken in Infisical by a connection this resource did not create."""

    reason = "NameConflict"


class NameJustTaken(NameConflict):
    """A NameConflict whose holder Infisical created moments ago, so a record showing it is this resource's own (a
    second operator process's status write) may still be on its way: looked at again soon instead of waiting."""

    retry = Retry.BACKOFF

    def __init__(self, message: str, *, status_code: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(
            f"{message} It was created less than a minute ago: looking again shortly, in case another operator "
            "process created it for this resource.",
            status_code=status_code,
            retry_after=retry_after,
        )


class InfisicalUnsupported(InfisicalError):
    """This Infisical server has no Octopus Deploy app connections at all (a release from before December 2025)."""

    reason = "InfisicalUnsupported"
    retry = Retry.SLOW  # an upgrade of Infisical changes nothing the operator watches: look again now and then


class InfisicalIgnoredRequest(InfisicalError):
    """Infisical answered a create or update with success but did not store what was asked (e.g. projectId)."""

    reason = "InfisicalIgnoredRequest"
    retry = Retry.WAIT_FOR_CHANGE


class InfisicalNotFound(InfisicalError):
    reason = "InfisicalNotFound"
    retry = Retry.BACKOFF


class InfisicalUnavailable(InfisicalError):
    """5xx, timeouts and network errors."""

    reason = "InfisicalUnavailable"
    retry = Retry.BACKOFF


class InfisicalRateLimited(InfisicalError):
    reason = "InfisicalRateLimited"
    retry = Retry.RATE_LIMITED


class InfisicalCredentialsMissing(InfisicalError):
    """The per-resource identity Secret (spec.infisical.credentialsSecretRef) is missing or incomplete."""

    reason = "InfisicalCredentialsMissing"
    retry = Retry.WAIT_FOR_CHANGE


# --- secret syncs --------------------------------------------------------------------------------------------------
class ConnectionNotFound(OctoconnError):
    """The OctopusDeployConnection named in spec.connectionRef does not exist (yet)."""

    reason = "ConnectionNotFound"
    retry = Retry.WAIT_FOR_CHANGE  # the connection's own events wake the sync


class ConnectionNotReady(OctoconnError):
    """The referenced connection exists but is not Ready: nothing can be verified or written through it."""

    reason = "ConnectionNotReady"
    retry = Retry.WAIT_FOR_CHANGE


class DestinationNotFound(OctopusError):
    """The Octopus space, project or a scope value named in the spec does not exist, or the key cannot see it."""

    reason = "DestinationNotFound"
    retry = Retry.SLOW  # it may be created in Octopus later, which no Kubernetes event announces


class OctopusPermissionMissing(OctopusPermissionDenied):
    """The connection's key lacks a permission the sync needs on the destination project."""

    reason = "MissingPermission"


class ConflictingSync(InvalidSpec):
    """Another OctopusDeploySecretSync writes into the same Octopus project with names this one could produce."""

    reason = "ConflictingSync"


class SyncFailed(OctoconnError):
    """Infisical gave up on the sync after its retries; the message is Octopus's (or Infisical's), made readable."""

    reason = "SyncFailed"
    retry = Retry.SLOW
