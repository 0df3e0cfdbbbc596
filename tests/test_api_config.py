"""``[api]``, ``[[webhook]]`` and ``[[filedrop]]`` in the config file, and ``dkgw api``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.api.auth import UsersFile, hash_password, parse_basic
from gateway.config import ConfigError, load_config


def test_api_is_off_by_default_and_loopback_needs_no_auth(write) -> None:
    assert load_config(write("")).api.port is None
    api = load_config(write('[api]\nlisten = "127.0.0.1:8443"\n')).api
    assert (api.host, api.port, api.tls) == ("127.0.0.1", 8443, False)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[api]\nlisten = "0.0.0.0:8443"\n', "not loopback"),
        ('[api]\nlisten = "127.0.0.1:8443"\ncertificate = "x.pem"\n', "does not exist"),
        ('[api]\nlisten = "127.0.0.1:8443"\nbogus = 1\n', "unknown option"),
        ('[api]\nlisten = "localhost"\n', "HOST:PORT"),
        ('[[webhook]]\nurl = "ftp://x"\n', "http:// or https://"),
        ('[[webhook]]\nurl = "https://x"\nevent_types = ["SENT"]\n', "unknown SENT"),
        ('[[webhook]]\nurl = "https://x"\ninitial_backoff = 10.0\nmax_backoff = 1.0\n', "max_"),
        (
            '[[webhook]]\nname = "a"\nurl = "https://x"\n[[webhook]]\nname = "a"\nurl = "https://y"\n',
            "unique",
        ),
        ('[[filedrop]]\nname = "x y"\ncpa_id = "c"\nservice = "s"\ninbox = "in"\n', "name"),
        ('[[filedrop]]\nname = "wmo"\nservice = "s"\ninbox = "in"\n', "cpa_id and service"),
        ('[[filedrop]]\nname = "wmo"\ncpa_id = "c"\nservice = "s"\n', "outbox, an inbox"),
        (
            '[[filedrop]]\nname = "wmo"\ncpa_id = "c"\nservice = "s"\noutbox = "out"\n',
            "outbox needs action",
        ),
        ("[webhook]\nurl = 'https://x'\n", "array of tables"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(write, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(extra))


def test_a_remote_listener_with_basic_auth_or_an_explicit_opt_out(write, tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("")
    api = load_config(write(f'[api]\nlisten = "0.0.0.0:8443"\nusers_file = "{users}"\n')).api
    assert api.users_file == users
    api = load_config(write('[api]\nlisten = "0.0.0.0:8443"\nallow_unauthenticated = true\n')).api
    assert api.allow_unauthenticated


def test_webhooks_and_filedrops_are_read(write, tmp_path: Path) -> None:
    config = load_config(
        write(
            """
[[webhook]]
url = "https://backoffice.example.nl/events"
cpa_ids = ["cpa-1"]
event_types = ["RECEIVED"]

[[filedrop]]
name = "wmo"
cpa_id = "cpa-1"
service = "urn:osb:services:GGK:iWmo:3.2"
action = "WMO301"
from_party = "urn:osb:oin:00000001001234567000"
from_role = "Gemeente"
to_party = "urn:osb:oin:00000004003214345001"
to_role = "GGk"
outbox = "drop/out"
inbox = "drop/in"
"""
        )
    )
    (hook,) = config.webhooks
    assert (hook.name, hook.cpa_ids, hook.event_types) == ("webhook-1", ("cpa-1",), ("RECEIVED",))
    (drop,) = config.filedrops
    assert drop.outbox == (tmp_path / "drop" / "out").resolve()
    assert drop.inbox == (tmp_path / "drop" / "in").resolve()


def test_hash_password_prints_a_line_the_users_file_accepts(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "api", "hash-password", "backoffice"],
        input="correct horse battery\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    users = tmp_path / "users"
    users.write_text(done.stdout)
    file = UsersFile(users)
    assert file.check("backoffice", "correct horse battery")
    assert not file.check("backoffice", "correct horse batter")
    assert not file.check("someone", "correct horse battery")
    short = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "api", "hash-password", "x"],
        input="short\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert short.returncode == 1 and "12 characters" in short.stderr


def test_openapi_command_prints_the_document() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "api", "openapi"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert json.loads(done.stdout)["paths"]["/ebms/messages"]["post"]["operationId"] == (
        "sendMessage"
    )


def test_users_file_rejects_broken_lines_and_basic_header_parsing(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("name-without-hash\n")
    with pytest.raises(ValueError, match="expected name:pbkdf2"):
        UsersFile(users)
    users.write_text(f"a:{hash_password('pw-123456789', iterations=1000)}\n")
    file = UsersFile(users)
    assert file.check("a", "pw-123456789")
    users.write_text("broken\n")  # a broken edit keeps the last good users
    assert file.check("a", "pw-123456789")
    assert parse_basic(b"Basic YTpi") == ("a", "b")
    assert parse_basic(b"Basic !!!") is None
    assert parse_basic(b"Bearer x") is None
    assert parse_basic(b"Basic YWI=") is None  # no colon


def test_the_admin_listener_takes_basic_auth_and_tls(write, pki: Path, tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("")
    party, ca = pki / "gemeente-voorbeeld", pki / "ca"
    admin = load_config(
        write(
            f'[admin]\nlisten = "127.0.0.1:9100"\nusers_file = "{users}"\n'
            f'certificate = "{party / "tls-server.pem"}"\nkey = "{party / "tls-server.key"}"\n'
            f'client_ca = "{ca / "root.pem"}"\n'
        )
    ).admin
    assert (admin.port, admin.users_file, admin.client_ca) == (9100, users, ca / "root.pem")
    with pytest.raises(ConfigError, match="go together"):
        load_config(write(f'[admin]\nlisten = "127.0.0.1:9100"\nkey = "{users}"\n'))
    with pytest.raises(ConfigError, match="needs certificate"):
        load_config(write(f'[admin]\nlisten = "127.0.0.1:9100"\nclient_ca = "{users}"\n'))
