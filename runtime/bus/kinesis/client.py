"""Calls to Kinesis: one lazily opened aiobotocore client, and the retry policy every call runs under.

Retries (docs/operations.md §How reading works)
-----------------------------------------------
Throttling errors (``ProvisionedThroughputExceededException`` and friends) and transient transport
errors back off exponentially with full jitter, and after ``_MAX_ATTEMPTS`` the call raises
:class:`BusUnavailable` (the partition actor then restarts under its supervisor's backoff). The
policy is the kernel's (``runtime/kernel/restarts.py``: a :class:`Retry` per call); botocore's own
retries are off, so no retry runs inside another: a PutRecords whose records are partly refused
spends the same attempts on re-sending them as on the call's own failures (``publisher.py``).
botocore's ``read_timeout`` bounds every call (kinesalite can hang forever on ``AT_TIMESTAMP``).

Credentials and endpoint
------------------------
They come from the configuration and the environment (the standard AWS chain); they are never
logged — log lines name the endpoint as scheme://host:port only. With a loopback ``endpoint_url``
(an emulator) and no credentials in the environment, fixed dummy credentials are used, so botocore
never probes the EC2 metadata address outside the machine.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import structlog

from ctxplane.runtime.exceptions import BusClosed, BusError
from ctxplane.runtime.kernel.restarts import Backoff, Retry

__all__ = (
    "THROTTLED",
    "BusUnavailable",
    "ClientFactory",
    "KinesisCalls",
    "Transient",
    "error_code",
    "http_status",
    "is_loopback",
)

log = structlog.get_logger("ctxplane.bus.kinesis")

# Attempts per call for throttling / transient errors; with the backoff below that is ~20 s of
# trying before a read gives up and lets the partition actor's supervisor take over.
_MAX_ATTEMPTS: Final = 8
# Full jitter under a cap doubling from 0.1 s to 5 s: spreads the retries of every shard throttled
# at the same moment.
_RETRY: Final = Backoff(initial=0.1, maximum=5.0, full_jitter=True)

#: Error codes that mean "throttled": another attempt after a pause may succeed.
THROTTLED: Final = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "LimitExceededException",
    "KMSThrottlingException", "RequestLimitExceeded",
})
_TRANSIENT_CODES: Final = frozenset({"InternalFailure", "InternalServerError", "ServiceUnavailable", "500", "503"})


class BusUnavailable(BusError):
    """The bus did not answer usefully after every retry (throttled, unreachable, 5xx). Unlike a
    plain :class:`BusError`, a later retry may succeed."""


class Transient(Exception):
    """One attempt at a call failed in a way another attempt may not (see :meth:`KinesisCalls.attempt`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_loopback(endpoint_url: str | None) -> bool:
    """Whether the endpoint is on this machine (an emulator)."""
    if not endpoint_url:
        return False
    host = urlsplit(endpoint_url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def _safe_endpoint(endpoint_url: str | None) -> str:
    """scheme://host:port only: never user info, path or query (which could carry secrets)."""
    if not endpoint_url:
        return "aws"
    parts = urlsplit(endpoint_url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def error_code(exc: BaseException) -> str | None:
    """The service's error code of a botocore ClientError (``None`` for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a botocore ClientError (``None`` for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


Errors = tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...], tuple[type[BaseException], ...]]


def _botocore_errors() -> Errors:
    """(client errors, transport errors, credential errors) of botocore, resolved once (the
    import is lazy: the file bus never pays for botocore)."""
    from botocore import exceptions as bex

    transport: tuple[type[BaseException], ...] = (
        bex.EndpointConnectionError, bex.ConnectionClosedError, bex.ReadTimeoutError,
        bex.ConnectTimeoutError, bex.HTTPClientError, OSError, TimeoutError,
    )
    credentials = (bex.NoCredentialsError, bex.PartialCredentialsError, bex.NoRegionError)
    return (bex.ClientError,), transport, credentials


ClientFactory = Callable[[], Any]  # returns an async context manager yielding a kinesis client


class KinesisCalls:
    """The client of one Kinesis adapter, and its calls under the retry policy.

    Args:
        endpoint_url: ``None`` for AWS; e.g. ``http://127.0.0.1:4567`` for an emulator.
        region: the AWS region.
        client_factory: for tests — returns an async context manager yielding a client with the
            aiobotocore kinesis methods; default: one aioboto3 client, opened on first use.
        read_timeout_s, connect_timeout_s: botocore timeouts per call.

    One client serves every call (aiobotocore clients are safe for concurrent use by tasks of one
    event loop); it is created lazily in the caller's event loop and closed by :meth:`aclose`.
    """

    def __init__(
        self,
        *,
        endpoint_url: str | None,
        region: str | None,
        client_factory: ClientFactory | None,
        read_timeout_s: float,
        connect_timeout_s: float,
    ) -> None:
        self._endpoint_url = endpoint_url
        self._region = region
        self._client_factory = client_factory
        self._read_timeout_s = read_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._client_lock = anyio.Lock()
        self.closed = False
        self._rng = random.Random()
        self._errors: Errors | None = None

    @property
    def region(self) -> str | None:
        """The AWS region the client is for."""
        return self._region

    # -- client ---------------------------------------------------------------------------------

    async def client(self) -> Any:
        """The client, opened on first use.

        Raises:
            BusClosed: after :meth:`aclose`.
        """
        if self.closed:
            raise BusClosed("the Kinesis bus is closed")
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                stack = AsyncExitStack()
                factory = self._client_factory or self._default_client
                self._client = await stack.enter_async_context(factory())
                self._stack = stack
                self._errors = _botocore_errors()
                log.info("kinesis client ready", endpoint=_safe_endpoint(self._endpoint_url), region=self._region)
        return self._client

    def _default_client(self) -> Any:
        import aioboto3
        from aiobotocore.config import AioConfig

        kwargs: dict[str, Any] = {}
        if is_loopback(self._endpoint_url) and not (
            os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")
        ):
            # An emulator accepts any credentials; without some, botocore would try the EC2
            # metadata service (169.254.169.254), an address outside this machine.
            kwargs = {"aws_access_key_id": "ctxplane-local", "aws_secret_access_key": "ctxplane-local"}
        config = AioConfig(
            connect_timeout=self._connect_timeout_s,
            read_timeout=self._read_timeout_s,
            # One retry policy (ours, below), not two stacked ones.
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=64,
        )
        session = aioboto3.Session()
        return session.client(
            "kinesis", endpoint_url=self._endpoint_url, region_name=self._region, config=config, **kwargs
        )

    @property
    def errors(self) -> Errors:
        """(client errors, transport errors, credential errors) of botocore; only once the client exists."""
        assert self._errors is not None
        return self._errors

    async def client_errors(self) -> tuple[type[BaseException], ...]:
        """botocore's ClientError (as a tuple for ``except``), once the client exists."""
        await self.client()
        return self.errors[0]

    async def aclose(self) -> None:
        self.closed = True
        stack, self._stack = self._stack, None
        self._client = None
        if stack is not None:
            with anyio.CancelScope(shield=True):
                await stack.aclose()

    # -- calls with retries ------------------------------------------------------------------------

    async def call(self, operation: str, *, what: str, **kwargs: Any) -> Any:
        """Call ``client.<operation>(**kwargs)``, retrying throttling and transient failures with
        exponential backoff and full jitter.

        Raises:
            BusUnavailable: still failing after ``_MAX_ATTEMPTS``.
            botocore ClientError: any other service error (the caller classifies it).
        """
        client = await self.client()
        retry = self.retry()
        while True:
            try:
                return await self.attempt(client, operation, **kwargs)
            except Transient as failure:
                await self.back_off(retry, operation, what, failure.reason)

    async def attempt(self, client: Any, operation: str, **kwargs: Any) -> Any:
        """One call of ``client.<operation>(**kwargs)``.

        Raises:
            Transient: throttled, a server error (not for GetRecords, whose 5xx the caller
                handles: moto answers a bad iterator so), or the endpoint unreachable.
            BusError: no credentials or region (the message names what is missing, never a value).
            botocore ClientError: any other service error.
        """
        client_errors, transport_errors, credential_errors = self.errors
        try:
            return await getattr(client, operation)(**kwargs)
        except credential_errors as exc:
            raise BusError(f"kinesis {operation}: {exc} (set AWS credentials / region, or bus.region)") from None
        except client_errors as exc:
            code = error_code(exc)
            if code in THROTTLED:
                raise Transient(f"throttled ({code})") from None
            if (code in _TRANSIENT_CODES or (http_status(exc) or 0) >= 500) and operation != "get_records":
                raise Transient(f"server error ({code})") from None
            raise
        except transport_errors as exc:
            raise Transient(f"unreachable ({type(exc).__name__})") from None

    def retry(self) -> Retry:
        """A fresh budget of attempts for one call (or one chunk of records)."""
        return Retry(_RETRY, attempts=_MAX_ATTEMPTS, rng=self._rng)

    async def back_off(self, retry: Retry, operation: str, what: str, reason: str) -> None:
        """After a failed attempt: wait the backoff, or raise when it was the last.

        Raises:
            BusUnavailable: ``retry`` is exhausted.
        """
        pause = retry.failed()
        if retry.exhausted:
            raise BusUnavailable(f"kinesis {operation} for {what} failed {retry.failures} times: {reason}")
        log.warning("kinesis call backing off", operation=operation, target=what, reason=reason,
                    attempt=retry.failures, retry_in_s=round(pause, 3))
        await anyio.sleep(pause)
