"""Schema validation from many threads at once (found by tests/fuzz/wire.py).

The gateway validates envelopes and CPAs in the store's thread pool.  An lxml
XMLSchema keeps one error log, reset by every validation, so a schema object
shared by threads made one request's refusal read another request's log, or an
empty one: ``parse_envelope`` then raised IndexError instead of EnvelopeError.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from cpa.parse import CpaReadError, read_document
from gateway.ebms.envelope import EnvelopeError, parse_envelope
from tests.conftest import FIXTURES
from tests.messages import render


def _hammer(work: list[Callable[[], None]], rounds: int) -> list[str]:
    """Run each callable ``rounds`` times in a thread of its own; what went wrong."""
    problems: list[str] = []
    start = threading.Barrier(len(work))

    def loop(job: Callable[[], None]) -> None:
        start.wait()
        for _ in range(rounds):
            try:
                job()
            except Exception as exc:
                problems.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=loop, args=(job,)) for job in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return problems


def test_envelope_refusals_from_many_threads_are_each_their_own() -> None:
    good = render("EbMSMessage")
    bad = good.replace(b"<eb:Action>", b"<eb:Bogus/><eb:Action>")

    def accept() -> None:
        parse_envelope(good)

    def refuse() -> None:
        try:
            parse_envelope(bad)
        except EnvelopeError as exc:
            assert "Bogus" in str(exc), exc
        else:
            raise AssertionError("accepted an envelope with an unknown element")

    problems = _hammer([accept, refuse] * 4, rounds=600)
    assert problems == []


def test_cpa_schema_findings_from_many_threads_are_each_their_own() -> None:
    xml = (FIXTURES / "cpa" / "cpaStubEBF.be.http.unsigned.xml").read_bytes()
    marker = b"</tns:PartyInfo>"
    assert marker in xml

    def refuse(name: str) -> Callable[[], None]:
        broken = xml.replace(marker, f"<tns:{name}/>".encode() + marker, 1)

        def job() -> None:
            try:
                read_document(broken)
            except CpaReadError as exc:
                assert name in str(exc) and len(exc.problems) == 1, exc
            else:
                raise AssertionError("accepted a CPA with an unknown element")

        return job

    problems = _hammer([refuse(f"Unknown{n}") for n in range(4)], rounds=40)
    assert problems == []
