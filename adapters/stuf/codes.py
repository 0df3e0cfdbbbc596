"""Rejection codes and the :class:`Rejection` record shared by the StUF modules.

The chain's Fo01 code lists are not stable (the 2018 list [FC18] and the
Inlichtingenbureau's renumbered list of 2025 differ; docs/stuf.md, "Decisions",
code list), so every rule carries the code of the list
the gateway was built against, and codes the chain has no word for are local
(``GW…``).  A Foutcode is at most 7 characters [StUF stuf0301.xsd Foutcode].
"""

from __future__ import annotations

from dataclasses import dataclass

#: Envelope larger than the configured limit [FC18 IB007; GGk21 §2.2: 25 MB].
TOO_LARGE = "IB007"
#: Envelope not well-formed or not valid against ggk0210 [FC18 RIN001].
ENVELOPE_INVALID = "RIN001"
#: Envelope of another StUF-GGk version than ggk0210 [FC18 IB798].
STUF_VERSION = "IB798"
#: referentienummer / crossRefnummer not a lower-case UUID v4 [FC18 IB009; GGk21 §3].
NOT_UUID4 = "IB009"
#: ontvanger/applicatie is not ``GGk``, or the receiving organisation has the
#: wrong shape for the message type [FC18 IB210; GGk21 §3 "vaste waarde GGk"].
RECEIVER_UNKNOWN = "IB210"
#: functie is not a message type this gateway knows [Inlichtingenbureau list 2025,
#: IB004; docs/stuf.md, "Decisions", code list].
FUNCTIE_UNKNOWN = "IB004"
#: berichtcode/functie combination not allowed for this sender [FC18 IB240].
DIRECTION = "IB240"
#: functie not enabled for this exchange [FC18 IB234].
FUNCTIE_NOT_ENABLED = "IB234"
#: Sender not authorised for the gemeentecode [FC18 IB002].
NOT_AUTHORISED = "IB002"
#: Gemeentecode in the envelope differs from the payload header [FC17 CC09].
GEMEENTE_MISMATCH = "CC09"
#: Payload not valid against its iStandaarden XSD [FC18 StUF055].
PAYLOAD_INVALID = "StUF055"
#: referentienummer already used by this sender [IB216, FC18 "nog check bij IB"].
DUPLICATE = "IB216"
#: Payload cannot be read: not base64, BOM, not UTF-8, not well-formed, wrong
#: bestand kind [GGk21 §2.2 "UTF-8 zonder BOM"].  Local code.
PAYLOAD_UNREADABLE = "GW001"
#: Payload root is not the message ``functie`` names [GGk21 §3.2-§3.3 functie;
#: docs/stuf.md rule 6a].  Local code.
PAYLOAD_NOT_FUNCTIE = "GW002"
#: BerichtVersie/-Subversie differ from functieVersie/-Subversie [GGk21 §3].  Local code.
VERSION_MISMATCH = "GW003"
#: Payload release not enabled for this exchange (docs/stuf.md rule 6b).  Local code.
RELEASE_NOT_ALLOWED = "GW004"
#: No XSD for the payload's release and message in this gateway.  Local code.
SCHEMA_UNAVAILABLE = "GW005"
#: The relay could not process the item (a file, the store, a bug); the reason says
#: what, never the content.  Local code, never sent in an Fo01.
RELAY_FAILED = "GW009"


@dataclass(frozen=True)
class Rejection:
    """One reason to refuse a message.

    ``text`` is safe to log and to send in a Fo01: it names elements and
    positions, never payload values (citizens' data).  ``location`` is the
    line and element path when the rule knows one.
    """

    code: str
    text: str
    location: str | None = None


#: No CPA (or no route in it) for the message [FC18 IB101/IB102: no valid CPA / routing].
NO_CPA = "IB101"
