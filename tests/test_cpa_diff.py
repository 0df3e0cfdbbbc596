"""cpa.diff: what changes between two parsed versions of a CPA."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from cpa.diff import Change, diff_cpas, format_change
from cpa.generate import make_cpa
from cpa.parse import parse_cpa
from tests.conftest import NODE_OIN, load_cert


def test_the_same_cpa_has_no_changes(make_spec) -> None:
    cpa = parse_cpa(make_cpa(make_spec()))
    assert diff_cpas(cpa, cpa) == []


def test_validity_endpoint_and_reliability_changes_are_named(make_spec) -> None:
    base = make_spec(profile="osb-rm", retries=3, retry_interval=timedelta(seconds=60))
    changed = replace(
        base,
        end=base.end + timedelta(days=30),
        b=replace(base.b, endpoint="https://new.example.nl/ebms"),
        retries=5,
    )
    changes = diff_cpas(parse_cpa(make_cpa(base)), parse_cpa(make_cpa(changed)))
    lines = [format_change(c) for c in changes]
    assert any(c.what == "validity" and c.kind == "changed" for c in changes), lines
    endpoint = [c for c in changes if c.what.endswith("endpoints")]
    assert len(endpoint) == 1 and endpoint[0].new == "https://new.example.nl/ebms", lines
    assert NODE_OIN in endpoint[0].what
    reliable = [c for c in changes if "doc exchange" in c.what]
    assert reliable and all("retries 3" in c.old and "retries 5" in c.new for c in reliable), lines
    assert all(c.old is not None for c in reliable)


def test_a_new_certificate_shows_its_fingerprint(make_spec, pki: Path) -> None:
    base = make_spec()
    renewed = load_cert(pki / "ggk-rinis-test" / "tls-client.pem")
    swapped = replace(base, b=replace(base.b, tls_server_cert=renewed))
    changes = diff_cpas(parse_cpa(make_cpa(base)), parse_cpa(make_cpa(swapped)))
    certs = [c for c in changes if " certificate " in c.what]
    assert certs, [format_change(c) for c in changes]
    digest = hashlib.sha256(renewed.public_bytes(Encoding.DER)).hexdigest()
    assert any(c.new is not None and f"SHA-256 {digest}" in c.new for c in certs)
    assert all(c.old != c.new for c in certs)


def test_format_change_marks_added_removed_changed() -> None:
    assert format_change(Change("x", None, "1")) == "+ x: 1"
    assert format_change(Change("x", "1", None)) == "- x: 1"
    assert format_change(Change("x", "1", "2")) == "~ x: 1 -> 2"
