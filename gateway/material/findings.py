"""A problem found in a configuration or its files, for ``dkgw serve --check``.

Severities: an *error* would make the gateway fail or be refused by partners;
a *warning* needs attention soon (docs/operations.md, "Starting and checking").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    """One problem: how bad, what it concerns (a config option, a CPA) and what is wrong."""

    severity: Severity
    subject: str
    text: str

    def line(self) -> str:
        """The report line: ``error: [tls] certificate: expired on 2026-01-01``."""
        return f"{self.severity}: {self.subject}: {self.text}"


def error(subject: str, text: str) -> Finding:
    """An error finding."""
    return Finding("error", subject, text)


def warning(subject: str, text: str) -> Finding:
    """A warning finding."""
    return Finding("warning", subject, text)


def has_errors(findings: Iterable[Finding]) -> bool:
    """True when any finding is an error."""
    return any(f.severity == "error" for f in findings)
