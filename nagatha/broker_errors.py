"""What went wrong talking to RabbitMQ, read from the errors Dramatiq and pika raise.

Dramatiq wraps pika's errors (``ConnectionClosed`` from ``ProbableAuthenticationError``), and
pika keeps a socket's error as ``.exception`` of its connector errors: :func:`error_chain`
walks causes, contexts and such arguments, and the functions below read it.
"""

from __future__ import annotations

from collections.abc import Iterator

import dramatiq.errors
import pika.exceptions
from pika.adapters.utils.connection_workflow import (
    AMQPConnectorException,
    AMQPConnectorStackTimeout,
)

#: What talking to RabbitMQ can raise when it is unreachable, refuses or stalls. pika's
#: connector errors (a port that accepts TCP but never completes the AMQP handshake raises
#: ``AMQPConnectorStackTimeout``) derive from neither ``AMQPError`` nor ``OSError``.
CONNECTION_ERRORS = (
    dramatiq.errors.BrokerConnectionError,
    pika.exceptions.AMQPError,
    AMQPConnectorException,
    OSError,
)

#: Channel-close codes that refuse a message for good: 403 ACCESS_REFUSED, 404 NOT_FOUND,
#: 406 PRECONDITION_FAILED. Retrying the same publish meets them again.
REFUSAL_CODES = frozenset({403, 404, 406})


def error_chain(exc: BaseException, limit: int = 50) -> Iterator[BaseException]:
    """``exc``, then the errors inside it, breadth first, each once (at most ``limit``)."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending and len(seen) < limit:
        error = pending.pop(0)
        if id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        inner = [*error.args, getattr(error, "exception", None)]
        pending += [a for a in inner if isinstance(a, BaseException)]
        pending += [e for e in (error.__cause__, error.__context__) if e is not None]


def refused_for_good(exc: BaseException, *, nacks: bool = True) -> bool:
    """True if RabbitMQ answered and refused (a NACK, an unroutable message, a channel closed
    with a :data:`REFUSAL_CODES` code, a field over 255 bytes), rather than being unreachable.

    ``nacks=False`` leaves NACKs and returns out, for a caller that tries those again.
    """
    answers = (pika.exceptions.NackError, pika.exceptions.UnroutableError) if nacks else ()
    for error in error_chain(exc):
        if isinstance(error, (*answers, pika.exceptions.ShortStringTooLong)):
            return True
        if (
            isinstance(error, pika.exceptions.ChannelClosedByBroker)
            and error.reply_code in REFUSAL_CODES
        ):
            return True
    return False


def refused_access(exc: BaseException) -> str | None:
    """What to fix, if RabbitMQ refused the login or the vhost (no outage: retrying does not
    help); None for any other error."""
    for error in error_chain(exc):
        if isinstance(error, pika.exceptions.ProbableAuthenticationError):
            return "RabbitMQ refused the login: check the user and password of broker.url"
        if isinstance(error, pika.exceptions.ProbableAccessDeniedError):
            return (
                "RabbitMQ refused access to the vhost: check the vhost of broker.url and "
                "the user's permissions there"
            )
    return None


def broker_error_reason(exc: BaseException) -> str:
    """Why talking to RabbitMQ failed, in words: a refused login or vhost is no outage, and
    a refused connection is named as such."""
    refused = refused_access(exc)
    if refused is not None:
        return refused
    socket_error: OSError | None = None
    for error in error_chain(exc):
        if isinstance(error, AMQPConnectorStackTimeout):
            return (
                "no AMQP handshake in time: is RabbitMQ (and nothing else) listening at "
                "broker.url, and is it overloaded?"
            )
        if isinstance(error, OSError) and socket_error is None:
            socket_error = error
    if socket_error is not None:
        return socket_error.strerror or type(socket_error).__name__
    return type(exc).__name__
