"""Worked examples for every ``dkgw`` command, shown at the end of its ``--help``.

Kept in one table so the whole command line reads as one manual, and so a
test can check that no command goes without one.
"""

from __future__ import annotations

#: Command words → example lines.  Paths follow deploy/dkgw.service.
EXAMPLES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("cpa", "validate"): ("dkgw cpa validate partner-cpa.xml",),
    ("cpa", "import"): (
        "dkgw --config /etc/dkgw/dkgw.toml cpa import partner-cpa.xml",
        "dkgw --config /etc/dkgw/dkgw.toml cpa import --overwrite partner-cpa-v2.xml",
    ),
    ("cpa", "list"): ("dkgw --config /etc/dkgw/dkgw.toml cpa list --json",),
    ("cpa", "show"): ("dkgw --config /etc/dkgw/dkgw.toml cpa show GGK_iWmo_3_2_demo",),
    ("cpa", "diff"): (
        "dkgw --config /etc/dkgw/dkgw.toml cpa diff partner-cpa-v2.xml",
        "dkgw --config /etc/dkgw/dkgw.toml cpa diff partner-cpa-v2.xml --against GGK_iWmo_3_2_demo",
    ),
    ("cpa", "delete"): (
        "dkgw --config /etc/dkgw/dkgw.toml cpa delete GGK_iWmo_3_2_demo",
        "dkgw --config /etc/dkgw/dkgw.toml cpa delete GGK_iWmo_3_2_demo --force",
    ),
    ("cpa", "make"): (
        "dkgw cpa make --a-name 'Gemeente Voorbeeld' --a-id 00000001001234567000 "
        "--a-role Gemeente --a-endpoint https://gw.gemeente.test/ebms --a-certs certs/gemeente "
        "--b-name GGk --b-id 00000001007654321000 --b-role GGk "
        "--b-endpoint https://ggk.test/ebms --b-certs certs/ggk "
        "--service GGK:iWmo:3.2 --action a:WMO301 --action b:WMO302 -o cpa.xml",
    ),
    ("serve",): (
        "dkgw serve --config /etc/dkgw/dkgw.toml --check",
        "dkgw serve --config /etc/dkgw/dkgw.toml",
    ),
    ("ping",): (
        "dkgw --config /etc/dkgw/dkgw.toml ping GGK_iWmo_3_2_demo "
        "--from 00000001001234567000 --to 00000001007654321000",
    ),
    ("send",): (
        "dkgw --config /etc/dkgw/dkgw.toml send GGK_iWmo_3_2_demo "
        "--from 00000001001234567000 --from-role Gemeente "
        "--to 00000001007654321000 --to-role GGk "
        "--service urn:osb:services:GGK:iWmo:3.2 --action WMO301 --file bericht.xml",
    ),
    ("message",): (
        "dkgw --config /etc/dkgw/dkgw.toml message list --status DELIVERY_FAILED",
        "dkgw --config /etc/dkgw/dkgw.toml message show 1f0c…@gemeente-voorbeeld",
        "dkgw --config /etc/dkgw/dkgw.toml message retry 1f0c…@gemeente-voorbeeld",
        "dkgw --config /etc/dkgw/dkgw.toml message 1f0c…@gemeente-voorbeeld --direction out",
    ),
    ("check", "ping"): ("dkgw --config /etc/dkgw/dkgw.toml check ping --all",),
    ("demo",): ("dkgw demo", "dkgw demo --keep-running"),
    ("urlmap", "set"): (
        "dkgw --config /etc/dkgw/dkgw.toml urlmap set "
        "https://ggk.test/ebms https://proxy.internal:8443/ggk",
    ),
    ("urlmap", "delete"): (
        "dkgw --config /etc/dkgw/dkgw.toml urlmap delete https://ggk.test/ebms",
    ),
    ("urlmap", "list"): ("dkgw --config /etc/dkgw/dkgw.toml urlmap list",),
    ("api", "hash-password"): ("dkgw api hash-password backoffice >> /etc/dkgw/api-users",),
    ("api", "openapi"): ("dkgw api openapi > openapi.json",),
    ("log",): (
        "dkgw --config /etc/dkgw/dkgw.toml log --since 24h --type WMO301",
        "dkgw --config /etc/dkgw/dkgw.toml log --status rejected --json",
    ),
    ("report",): ("dkgw --config /etc/dkgw/dkgw.toml report 42",),
    ("purge",): ("dkgw --config /etc/dkgw/dkgw.toml purge --dry-run",),
    ("backup",): (
        "dkgw --config /etc/dkgw/dkgw.toml backup /var/backups/dkgw/gateway-2026-12-02.sqlite3",
    ),
    ("status",): (
        "dkgw --config /etc/dkgw/dkgw.toml status",
        "dkgw --config /etc/dkgw/dkgw.toml status --json",
    ),
    ("upload",): ("dkgw --config /etc/dkgw/dkgw.toml upload aanlevering.zip",),
    ("config", "reference"): (
        "dkgw config reference > dkgw-reference.toml",
        "dkgw config reference --markdown > docs/configuration.md",
    ),
}
