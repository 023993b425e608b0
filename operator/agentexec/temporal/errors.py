"""What a failed Temporal call means, decided from the gRPC status and the
error's detail type, never from its message text.

Message text is not a contract, and ours carries user data: a workflow ID
holds the Kubernetes namespace, so in a namespace called ``team-namespace``
"not found" for a workflow reads like "namespace not found" (issue #18).
The classification follows the Go SDK's ``serviceerror.FromStatus``: a
NOT_FOUND whose detail is a ``NamespaceNotFoundFailure`` is the namespace;
any other NOT_FOUND (detail ``NotFoundFailure``, or none) is what was asked
about, here a workflow.
"""

from __future__ import annotations

import asyncio

from temporalio.api.errordetails.v1 import NamespaceNotFoundFailure
from temporalio.service import RPCError, RPCStatusCode

# Failures that mean "Temporal is not answering", as opposed to an answer we
# did not like (already started, not found, invalid argument...).
_UNAVAILABLE_CODES = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.CANCELLED,
}
# How a server that will not answer the health check to this caller says so
# (Temporal Cloud, namespace-scoped API key: "Request unauthorized").
HEALTH_REFUSED_CODES = {
    RPCStatusCode.PERMISSION_DENIED,
    RPCStatusCode.UNAUTHENTICATED,
    RPCStatusCode.UNIMPLEMENTED,
}


class TemporalUnavailable(Exception):
    """Temporal cannot be reached now. ``reason`` is a condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ProbeRefused(Exception):
    """The server answered the probe, and the answer says it is not usable."""


def missing_namespace(exc: BaseException) -> str | None:
    """The namespace a NOT_FOUND answer says does not exist, from its details."""
    if not isinstance(exc, RPCError) or exc.status != RPCStatusCode.NOT_FOUND:
        return None
    for detail in exc.grpc_status.details:
        failure = NamespaceNotFoundFailure()
        if detail.Unpack(failure):
            return failure.namespace
    return None


def is_workflow_not_found(exc: BaseException) -> bool:
    """Whether a call about one workflow failed because that workflow does not exist."""
    return (
        isinstance(exc, RPCError)
        and exc.status == RPCStatusCode.NOT_FOUND
        and missing_namespace(exc) is None
    )


def is_namespace_not_found(exc: BaseException, namespace: str) -> bool:
    """Whether a call failed because ``namespace`` does not exist (for the frontend).

    Only that namespace: an execution may name another one, and that one
    missing is the execution's problem, not the connection's.
    """
    return missing_namespace(exc) == namespace


def is_unavailable(exc: BaseException) -> bool:
    """Whether an exception from a Temporal call means the server did not answer."""
    if isinstance(exc, TemporalUnavailable | TimeoutError | asyncio.TimeoutError):
        return True
    if isinstance(exc, RPCError):
        return exc.status in _UNAVAILABLE_CODES
    # The SDK's dial failure is a plain RuntimeError ("Failed client connect").
    return type(exc) is RuntimeError


def describe_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


# What the SDK's Rust core (rustls) says when a TLS handshake fails, and
# which setting to look at for each. Text is all a failed dial gives (a plain
# RuntimeError); these only add a hint to the message, they decide nothing.
_TLS_HINTS = (
    ("UnknownIssuer", "the server's certificate is not signed by TEMPORAL_TLS_CA_FILE"),
    ("NotValidForName", "the server's certificate does not name TEMPORAL_TLS_SERVER_NAME"),
    ("Expired", "a certificate has expired"),
    ("certificate", "check TEMPORAL_TLS_CA_FILE, TEMPORAL_TLS_CERT_FILE and _KEY_FILE"),
    ("tls", "check TEMPORAL_TLS_CA_FILE, TEMPORAL_TLS_CERT_FILE and _KEY_FILE"),
    ("handshake", "check TEMPORAL_TLS_CA_FILE, TEMPORAL_TLS_CERT_FILE and _KEY_FILE"),
)


def describe_dial_error(exc: BaseException, uses_tls: bool) -> str:
    """A dial failure, with what to check when it is a TLS handshake failure."""
    text = describe_error(exc)
    if uses_tls:
        lowered = text.lower()
        for marker, hint in _TLS_HINTS:
            if marker.lower() in lowered:
                return f"TLS handshake failed ({hint}): {text}"[:500]
    return text
