"""``[security]``: our signing and encryption keys, and whom we trust (docs/security.md).

The key options are declared here; the trust options are
:class:`gateway.trust.TrustSettings`', which reads and checks them itself
(:meth:`~gateway.trust.TrustSettings.from_table`).  They are declared here too,
with TrustSettings' own defaults, for the reference and the check of unknown
options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.settings.options import ConfigError, Context, Declared, Kind, Option, option
from gateway.settings.registry import Section, register
from gateway.trust import TrustSettings


def _key_file(value: Any, key: str, ctx: Context) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"[security] {key} must be a file path")
    target = (ctx.base / value).resolve()
    if not target.is_file():
        raise ConfigError(f"[security] {key}: {target} does not exist")
    return target


#: A key or certificate file of ``[security]``: given, it must exist.
KEY_FILE = Kind("path (must exist)", _key_file)


@dataclass(frozen=True)
class SecurityConfig:
    """``[security]``: message-level security, our keys and whom we trust.

    The keys are needed only when a CPA asks for signing (``-s``, ``-e``) or
    encryption (``-e``); a gateway without them serves the unsigned profiles.
    ``trust`` decides on partners' signing certificates (ebMS 2.0 §4.1; docs/security.md);
    its anchors default to ``[tls] trust_anchors`` and its intermediates to
    ``[tls] chain``.
    """

    trust: TrustSettings = field(default_factory=TrustSettings)
    signing_certificate: Path | None = option(
        None,
        "Our signing certificate: the CPA's SigningCertificateRef of our party.",
        kind=KEY_FILE,
    )
    signing_key: Path | None = option(None, "Its private key.", kind=KEY_FILE)
    encryption_certificate: Path | None = option(
        None,
        "Our encryption certificate: the CPA's EncryptionCertificateRef of our party.",
        kind=KEY_FILE,
    )
    encryption_key: Path | None = option(None, "Its private key.", kind=KEY_FILE)

    @property
    def legacy_crypto(self) -> bool:
        """Admit the legacy algorithms (SHA-1, AES-CBC, RSA v1.5; docs/security.md)."""
        return self.trust.legacy_crypto


#: Our own keys in ``[security]``; the other options are :class:`TrustSettings`'.
KEY_OPTIONS = ("signing_certificate", "signing_key", "encryption_certificate", "encryption_key")


def _by_trust_settings(value: Any, key: str, ctx: Context) -> Any:
    return value  # read and checked by TrustSettings.from_table


def _trust(name: str, kind: str, help: str, shown: str | None = None) -> Declared:
    default = getattr(TrustSettings(), name)
    return Declared(
        name, name, Option(help, Kind(kind, _by_trust_settings), default_text=shown), default
    )


#: The options TrustSettings reads, with its defaults.
TRUST_DECLARED = (
    _trust(
        "trust_anchors",
        "path or list of paths",
        "Roots partners' signing certificates must chain to.",
        "[tls] trust_anchors",
    ),
    _trust(
        "intermediates",
        "path or list of paths",
        "CA certificates that help build chains, never trusted themselves.",
        "[tls] chain",
    ),
    _trust(
        "crl_dir", "path", "A directory of CRLs (*.crl, *.pem, *.der), re-read at each refresh."
    ),
    _trust("crl_urls", "list of http(s) URLs", "CRLs to download."),
    _trust(
        "crl_refresh",
        f"number, {TrustSettings.MIN_REFRESH:g} to {TrustSettings.MAX_REFRESH:g}",
        "Seconds between CRL refreshes (PKIoverheid: at least every 4 hours).",
    ),
    _trust(
        "crl_mode",
        "require, best-effort or off",
        "No usable CRL for a certificate: refuse it, accept it with a warning, never look.",
    ),
    _trust("legacy_crypto", "boolean", "Admit legacy algorithms (SHA-1, AES-CBC, RSA 1.5)."),
)
TRUST_OPTIONS = tuple(d.name for d in TRUST_DECLARED)


def _read_security(
    table: Mapping[str, Any], ctx: Context, read: Mapping[str, Any]
) -> SecurityConfig:
    try:
        trust = TrustSettings.from_table(
            {k: v for k, v in table.items() if k in TRUST_OPTIONS}, base_dir=ctx.base
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    tls_chain = read["tls"].chain
    if not trust.intermediates and tls_chain is not None:
        # The CAs we chain our TLS certificates to usually issued the partners' too.
        trust = replace(trust, intermediates=(tls_chain,))
    paths: dict[str, Any] = {}
    for key in KEY_OPTIONS:
        if key in table:
            paths[key] = KEY_FILE.read(table[key], key, ctx)
    for what in ("signing", "encryption"):
        if (f"{what}_certificate" in paths) != (f"{what}_key" in paths):
            raise ConfigError(f"[security] {what}_certificate and {what}_key go together")
    for key in ("trust_anchors", "intermediates"):
        for target in getattr(trust, key):
            if not target.exists():
                raise ConfigError(f"[security] {key}: {target} does not exist")
    if trust.crl_dir is not None and not trust.crl_dir.is_dir():
        raise ConfigError(f"[security] crl_dir: {trust.crl_dir} is not a directory")
    return SecurityConfig(trust=trust, **paths)


register(
    Section("security", SecurityConfig, "security", _read_security, order=7, extra=TRUST_DECLARED)
)
