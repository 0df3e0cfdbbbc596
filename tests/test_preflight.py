"""``dkgw serve --check``: each check of gateway/preflight.py on its own, then the command.

The certificates are the session's example PKI (certs-example/make-pki), with its
``negative/`` set (expired, revoked, foreign), and the CPAs are generated from it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cpa.model import PartyId
from cpa.parse import parse_cpa
from gateway.preflight import (
    OwnCertificates,
    check_cpa_certificates,
    check_data_dir,
    check_key_permissions,
    check_schema,
    check_trusted,
    check_validity,
    load_pair,
)
from gateway.trust import TrustStore
from tests.conftest import GEMEENTE_OIN, load_cert
from tests.gateways import tls_toml

NOW = datetime.now(UTC)


def der(path: Path) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return load_cert(path).public_bytes(Encoding.DER)


# -- data_dir -------------------------------------------------------------------------


def test_data_dir_that_is_a_file_or_unwritable_is_an_error(tmp_path: Path) -> None:
    assert check_data_dir(tmp_path) == []
    assert check_data_dir(tmp_path / "new" / "var") == []  # created at start
    afile = tmp_path / "afile"
    afile.write_text("")
    [finding] = check_data_dir(afile)
    assert finding.line() == f"error: [gateway] data_dir: {afile} is not a directory"
    [finding] = check_data_dir(afile / "var")
    assert finding.line() == (
        f"error: [gateway] data_dir: {afile / 'var'} cannot be created: {afile} is not a directory"
    )


# -- key permissions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (0o600, None),
        (0o640, "warning: [tls] key: {path} is readable by its group (mode 0640)"),
        (0o644, "error: [tls] key: {path} is readable by everyone (mode 0644); chmod 600 it"),
    ],
)
def test_key_permissions(tmp_path: Path, mode: int, expected: str | None) -> None:
    key = tmp_path / "tls.key"
    key.write_text("secret")
    key.chmod(mode)
    findings = [f.line() for f in check_key_permissions("[tls] key", key)]
    assert findings == ([expected.format(path=key)] if expected else [])


# -- keys and certificates ------------------------------------------------------------


def test_key_that_belongs_to_another_certificate(pki: Path) -> None:
    party = pki / "gemeente-voorbeeld"
    cert, findings = load_pair(
        "[tls] certificate", party / "tls-server.pem", party / "tls-server.key"
    )
    assert cert is not None and findings == []
    cert, findings = load_pair("[tls] certificate", party / "tls-server.pem", party / "signing.key")
    assert cert is not None
    assert [f.line() for f in findings] == [
        f"error: [tls] certificate: the private key {party / 'signing.key'} does not belong "
        f"to the certificate {party / 'tls-server.pem'}"
    ]


def test_unreadable_and_wrong_files_are_each_reported(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM")
    cert, findings = load_pair("[tls] certificate", tmp_path / "missing.pem", junk)
    assert cert is None
    missing = tmp_path / "missing.pem"
    assert [f.line() for f in findings] == [
        f"error: [tls] certificate: cannot read {missing}: No such file or directory",
        f"error: [tls] key: {junk} holds no PEM private key",
    ]


def test_validity(pki: Path) -> None:
    expired = load_cert(pki / "negative/expired-signing.pem")
    [finding] = check_validity("[security] signing_certificate", expired, NOW)
    assert finding.severity == "error"
    assert finding.line() == (
        "error: [security] signing_certificate: certificate expired on "
        f"{expired.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    )
    good = load_cert(pki / "gemeente-voorbeeld/tls-server.pem")
    assert check_validity("[tls] certificate", good, NOW) == []
    soon = good.not_valid_after_utc - timedelta(days=10, hours=1)
    [finding] = check_validity("[tls] certificate", good, soon)
    assert finding.line() == (
        "warning: [tls] certificate: certificate expires on "
        f"{good.not_valid_after_utc:%Y-%m-%d %H:%M} UTC (in 10 days)"
    )
    early = good.not_valid_before_utc - timedelta(days=1)
    [finding] = check_validity("[tls] certificate", good, early)
    assert finding.text.startswith("certificate is not valid before ")


def test_revoked_and_untrusted_certificates(pki: Path) -> None:
    trust = TrustStore.from_files([pki / "ca/root.pem"], [pki / "ca/intermediate.pem"])
    trust.crls.load((pki / "ca/intermediate.crl.pem").read_bytes(), source="test")
    revoked = load_cert(pki / "negative/revoked-signing.pem")
    [finding] = check_trusted("[security] signing_certificate", revoked, "signing", trust, NOW)
    assert finding.severity == "error" and "revoked on" in finding.text
    foreign = load_cert(pki / "negative/foreign-client.pem")
    [finding] = check_trusted("[tls] client_certificate", foreign, "tls-client", trust, NOW)
    assert finding.severity == "error"
    assert finding.subject == "[tls] client_certificate"
    # Expiry is check_validity's: not reported twice.
    expired = load_cert(pki / "negative/expired-signing.pem")
    assert check_trusted("[security] signing_certificate", expired, "signing", trust, NOW) == []
    # Good, but the root's CRL is missing (crl_mode best-effort): a warning, or nothing.
    good = load_cert(pki / "gemeente-voorbeeld/signing.pem")
    [finding] = check_trusted("[security] signing_certificate", good, "signing", trust, NOW)
    assert finding.severity == "warning" and "not checked: no CRL of CN=TEST" in finding.text
    quiet = check_trusted(
        "[security] signing_certificate", good, "signing", trust, NOW, report_unchecked=False
    )
    assert quiet == []


# -- CPAs -----------------------------------------------------------------------------


def _own(pki: Path, slug: str, **override: Path) -> OwnCertificates:
    party = pki / slug
    paths = {
        "tls_server": party / "tls-server.pem",
        "tls_client": party / "tls-client.pem",
        "signing": party / "signing.pem",
        "encryption": party / "encryption.pem",
    }
    paths.update(override)
    return OwnCertificates(**{role: der(path) for role, path in paths.items()})


def test_cpa_must_name_the_certificates_we_present(pki: Path, cpa_xml) -> None:
    cpa = parse_cpa(cpa_xml(profile="osb-rm-e"))
    ours = [PartyId(GEMEENTE_OIN, "urn:osb:oin")]
    assert check_cpa_certificates([cpa], _own(pki, "gemeente-voorbeeld"), ours, NOW) == []
    # Without party_ids, our party is the one that names our certificates.
    assert check_cpa_certificates([cpa], _own(pki, "gemeente-voorbeeld"), [], NOW) == []

    other_tls = _own(pki, "gemeente-voorbeeld", tls_client=pki / "ggk-rinis-test/tls-client.pem")
    [finding] = check_cpa_certificates([cpa], other_tls, ours, NOW)
    assert finding.severity == "error" and finding.subject == f"CPA {cpa.cpa_id}"
    assert "has a TLS client certificate (CN=Gemeente Voorbeeld TLS client," in finding.text
    assert "that is not the one we present (" in finding.text

    other_signing = _own(pki, "gemeente-voorbeeld", signing=pki / "ggk-rinis-test/signing.pem")
    [finding] = check_cpa_certificates([cpa], other_signing, ours, NOW)
    assert "has a signing certificate" in finding.text

    strangers = _own(
        pki,
        "gemeente-voorbeeld",
        tls_server=pki / "negative/foreign-client.pem",
        tls_client=pki / "negative/foreign-client.pem",
        signing=pki / "negative/foreign-client.pem",
        encryption=pki / "negative/foreign-client.pem",
    )
    [finding] = check_cpa_certificates([cpa], strangers, [], NOW)
    assert (
        finding.line() == f"error: CPA {cpa.cpa_id}: none of its parties presents our certificates"
    )
    # A CPA no longer in force is not checked.
    assert check_cpa_certificates([cpa], strangers, [], cpa.end + timedelta(days=1)) == []


def test_store_newer_than_the_code(tmp_path: Path) -> None:
    assert check_schema([1, 2, 3], [1, 2, 3, 4]) == []
    [finding] = check_schema([1, 2, 3, 9999], [1, 2, 3])
    assert finding.line() == (
        "error: [gateway] store: the store has schema version 9999, newer than this gateway's "
        "0003; downgrading is not supported"
    )


# -- the command ----------------------------------------------------------------------


def dkgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_check_reports_every_problem_and_exits_1(pki: Path, tmp_path: Path) -> None:
    neg = pki / "negative"
    world = tmp_path / "signing.key"
    world.write_bytes((neg / "expired-signing.key").read_bytes())
    world.chmod(0o644)
    data = tmp_path / "data"
    data.write_text("a file, not a directory")
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{data}"\nstore = "sqlite:///{tmp_path / "gw.sqlite3"}"\n'
        '[http]\nlisten = "127.0.0.1:1443"\n'
        + tls_toml(pki, "gemeente-voorbeeld")
        + f'[security]\nsigning_certificate = "{neg / "expired-signing.pem"}"\n'
        f'signing_key = "{world}"\n'
    )
    done = dkgw("serve", "--config", str(config), "--check")
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert f"error: [gateway] data_dir: {data} is not a directory" in lines
    assert (
        f"error: [security] signing_key: {world} is readable by everyone (mode 0644); chmod 600 it"
    ) in lines
    assert any(
        line.startswith("error: [security] signing_certificate: certificate expired on ")
        for line in lines
    )
    assert lines[-1] == f"dkgw: configuration {config}: 3 error(s), see above"
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_serve_check_refuses_a_corrupt_store_and_a_store_from_a_newer_gateway(
    pki: Path, tmp_path: Path
) -> None:
    store = tmp_path / "gw.sqlite3"
    store.write_bytes(b"this is no SQLite database" * 100)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path}"\nstore = "sqlite:///{store}"\n'
        + tls_toml(pki, "gemeente-voorbeeld")
    )
    done = dkgw("serve", "--config", str(config), "--check")
    assert done.returncode == 1
    [line] = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith("error: [gateway] store: cannot open the store sqlite:")
    assert line.endswith(f"{store.name}: file is not a database")

    store.unlink()
    created = dkgw(
        "--store", f"sqlite:///{store}", "urlmap", "set", "https://a.test/", "https://b.test/"
    )
    assert created.returncode == 0, created.stderr
    with sqlite3.connect(store) as conn:
        conn.execute(
            "INSERT INTO schema_migration (version, name, checksum, applied_at) "
            "VALUES (9999, '9999_future', 'x', '2030-01-01T00:00:00.000000Z')"
        )
    done = dkgw("serve", "--config", str(config), "--check")
    assert done.returncode == 1
    assert "error: [gateway] store: the store has schema version 9999, newer than" in done.stderr
    # serve itself refuses too, with the same line and nothing started.
    served = dkgw("serve", "--config", str(config))
    assert served.returncode == 1
    assert "dkgw: error: [gateway] store: the store has schema version 9999" in served.stderr
    assert "Traceback" not in served.stderr
    assert os.path.getsize(store) > 0


# -- folders and webhook files --------------------------------------------------------


def test_file_drop_folders_and_webhook_files_are_checked(pki: Path, tmp_path: Path) -> None:
    from gateway.config import load_config
    from gateway.preflight import check_folders, check_webhook_files

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    secret = tmp_path / "hook.secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("no certificate here")
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path}"\nstore = "sqlite:///{tmp_path / "gw.sqlite3"}"\n'
        + tls_toml(pki, "gemeente-voorbeeld")
        + f"""
[[webhook]]
name = "bo"
url = "https://backoffice.test/events"
secret_file = "{secret}"
ca_file = "{not_pem}"

[[webhook]]
name = "gone"
url = "https://backoffice.test/events"
secret_file = "{tmp_path / "drop"}"
ca_file = "{pki / "ca" / "root.pem"}"

[[filedrop]]
name = "wmo"
cpa_id = "c"
service = "urn:osb:services:GGK:iWmo:3.2"
action = "WMO301"
from_party = "urn:osb:oin:{GEMEENTE_OIN}"
from_role = "Gemeente"
to_party = "urn:osb:oin:00000001007654321000"
to_role = "GGk"
outbox = "{blocker / "out"}"
inbox = "{tmp_path / "drop" / "in"}"
"""
    )
    (tmp_path / "drop").mkdir()
    loaded = load_config(config)
    assert [f.line() for f in check_folders(loaded)] == [
        f"error: [[filedrop]] wmo outbox: {blocker / 'out'} cannot be created: "
        f"{blocker} is not a directory"
    ]
    assert [f.line() for f in check_webhook_files(loaded, NOW)] == [
        f"error: [[webhook]] bo secret_file: {secret} is readable by everyone (mode 0644); "
        "chmod 600 it",
        f"error: [[webhook]] bo ca_file: {not_pem} holds no PEM certificate",
        f"error: [[webhook]] gone secret_file: cannot read {tmp_path / 'drop'}: Is a directory",
    ]
    done = dkgw("serve", "--config", str(config), "--check")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].endswith("4 error(s), see above")
