"""Fetching CRLs over HTTP and keeping a :class:`~gateway.crl.CrlStore` fresh, on the reactor.

The Twisted half of :mod:`gateway.crl`: the store and its checks stay free of
I/O, so the trust decisions (:mod:`gateway.trust`) and everything that makes
them never import Twisted.  [DK PKI002]: CRLs are refreshed at least every
4 hours; a failed fetch is logged and the last good CRL stays in use.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeAlias

import treq
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.web.client import Agent
from twisted.web.iweb import IAgent

from gateway.crl import DEFAULT_REFRESH_SECONDS, MAX_CRL_BYTES, CrlError, CrlStore

__all__ = ["CrlRefresher", "CrlTooLarge", "Fetcher", "fetch_crl"]

log = logging.getLogger("dkgw.crl")


class CrlTooLarge(CrlError):
    """The server sent more than the size cap allows."""


async def _fetch(agent: IAgent, url: str, timeout: float, max_bytes: int) -> bytes:
    client = treq.client.HTTPClient(agent)
    response = await client.get(url, timeout=timeout)
    refusal: CrlError | None = None
    if response.code != 200:
        refusal = CrlError(f"{url}: HTTP {response.code}")
    elif isinstance(response.length, int) and response.length > max_bytes:
        refusal = CrlTooLarge(f"{url}: {response.length} bytes, more than {max_bytes} allowed")
    if refusal is not None:
        # Read no body: the first chunk raises, which makes treq close the connection.
        def refuse(data: bytes) -> None:
            raise refusal

        with contextlib.suppress(CrlError):
            await treq.collect(response, refuse)
        raise refusal
    chunks: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > max_bytes:
            # Raising here makes treq stop the transfer and fail the Deferred.
            raise CrlTooLarge(f"{url}: more than the {max_bytes} bytes allowed")
        chunks.append(data)

    done: Deferred[None] = treq.collect(response, collect)
    await done
    return b"".join(chunks)


def fetch_crl(
    reactor: Any, url: str, *, timeout: float = 30.0, max_bytes: int = MAX_CRL_BYTES
) -> Deferred[bytes]:
    """GET ``url`` on the reactor and return the body, at most ``max_bytes`` of it.

    Fails with :class:`CrlError` on a non-200 answer or an oversized body, and with
    the network error or a timeout (``timeout`` seconds for the connection and the
    whole answer) otherwise.  Never blocks the reactor.
    """
    # Calling the interface gives mypy (which does not read zope declarations) the type;
    # Agent itself is untyped in Twisted.
    agent = IAgent(Agent(reactor, connectTimeout=timeout))  # type: ignore[no-untyped-call]
    fetched = Deferred.fromCoroutine(_fetch(agent, url, timeout, max_bytes))
    # treq's timeout covers waiting for the headers; this one covers the body too.
    fetched.addTimeout(timeout, reactor)
    return fetched


Fetcher: TypeAlias = Callable[[str], "Deferred[bytes]"]


class CrlRefresher:
    """Keeps a :class:`CrlStore` fresh from URLs and a directory, on the reactor.

    Every ``interval`` seconds (default 4 h, [PKI002]) each URL is fetched and the
    directory, if any, re-read (another process, such as a cron job, may drop CRLs
    there).  A fetch that fails, or yields a CRL that does not verify, is logged as an
    error and the CRL held before stays in use until its nextUpdate; from then on
    :meth:`CrlStore.status` reports it as stale.  ``fetch`` replaces the HTTP client
    (tests, proxies).
    """

    def __init__(
        self,
        store: CrlStore,
        reactor: IReactorTime,
        *,
        urls: Iterable[str] = (),
        directory: Path | None = None,
        interval: float = DEFAULT_REFRESH_SECONDS,
        timeout: float = 30.0,
        max_bytes: int = MAX_CRL_BYTES,
        fetch: Fetcher | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("the CRL refresh interval must be positive")
        self.store = store
        self.urls = tuple(urls)
        self.directory = directory
        self.interval = interval
        self._reactor = reactor
        if fetch is None:

            def fetch(url: str) -> Deferred[bytes]:
                return fetch_crl(reactor, url, timeout=timeout, max_bytes=max_bytes)

        self._fetch: Fetcher = fetch
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = reactor
        self._stopped = False
        self.failures: dict[str, str] = {}
        """URL (or directory) -> the last error, for as long as it keeps failing."""

    def start(self) -> Deferred[None]:
        """Refresh now, then every ``interval`` seconds; the result fires after this first round.

        A round waits for the previous one to finish, so rounds never overlap.
        """
        first = self.refresh()

        def schedule(result: None) -> None:
            if not self._loop.running and not self._stopped:
                self._loop.start(self.interval, now=False)

        first.addCallback(schedule)
        return first

    def stop(self) -> None:
        """Stop refreshing (a fetch in progress still completes)."""
        self._stopped = True
        if self._loop.running:
            self._loop.stop()

    def refresh(self) -> Deferred[None]:
        """Fetch every URL and re-read the directory once; never fails."""
        return Deferred.fromCoroutine(self._refresh())

    async def _refresh(self) -> None:
        if self.directory is not None:
            try:
                self.store.load_directory(self.directory)
                self.failures.pop(str(self.directory), None)
            except OSError as exc:
                self._failed(str(self.directory), f"cannot read the CRL directory: {exc}")
        for url in self.urls:
            try:
                data = await self._fetch(url)
                self.store.load(data, source=url)
            except Exception as exc:  # network, HTTP, size, CRL: all just logged
                self._failed(url, str(exc) or type(exc).__name__)
            else:
                self.failures.pop(url, None)

    def _failed(self, where: str, error: str) -> None:
        self.failures[where] = error
        log.error("CRL refresh from %s failed, keeping the CRL held before: %s", where, error)
