"""Addressing an outbound message: service, parties and roles resolved once, without I/O.

Every front door (REST, SOAP, the file drop, the StUF relay, the CLI) names a
message its own way: a service as ``type:value`` or as a value, a party by
``type:value`` or not at all, roles given or left to the CPA.  These plain
functions turn what a door gives (an :class:`Addressing`) and the CPA (read
by the caller) into one :class:`SendRoute`, or refuse with a
:class:`SendError` whose :class:`Refusal` each door maps to its own answer (an
HTTP status, a SOAP fault, a StUF Fo01, a CLI exit).

What a door gives as a string is the client's spelling and is checked
against the CPA here (an unknown service or party is refused by name); a
value (:class:`~cpa.model.Service`, :class:`~cpa.model.PartyId`) is taken
as given and :func:`cpa.resolve.resolve` alone judges it (CPPA 2.0 §8.4).
Roles left out are those the party plays for the service and action
(its ``CanSend``/``CanReceive`` binding, CPPA 2.0 §8.4); a
receiver left out is the CPA's other party (a Digikoppeling CPA has two).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from cpa.model import MSH_SERVICE, Cpa, PartyId, PartyInfo, Service, parse_party
from cpa.resolve import ResolutionError, Route, resolve

__all__ = [
    "Addressing",
    "Refusal",
    "SendError",
    "SendRoute",
    "resolve_send",
    "resolve_signal",
]


class Refusal(Enum):
    """Why a message cannot be sent: what a front door maps to its own refusal."""

    NO_CPA = "no-cpa"  # the CPA is not stored
    NO_SERVICE = "no-service"  # the CPA has no service by that type:value
    BAD_PARTY = "bad-party"  # a party id that cannot be read
    NO_PARTY = "no-party"  # the CPA has no party by that id
    NO_SENDER = "no-sender"  # no party of the CPA may send the action
    CANNOT_SEND = "cannot-send"  # the sender plays no role that sends the action
    CANNOT_RECEIVE = "cannot-receive"  # the receiver plays no role that receives it
    DUPLICATE = "duplicate"  # a client-chosen MessageId we have already sent
    NOT_IN_FORCE = "not-in-force"  # the CPA is not agreed or outside its period
    NOT_ALLOWED = "not-allowed"  # cpa.resolve refused the header keys
    NO_ENDPOINT = "no-endpoint"  # the receiver's channel has no endpoint
    INSECURE = "insecure"  # the message cannot be signed or encrypted as agreed
    UNKNOWN_MESSAGE = "unknown-message"  # resend, retry, status: no such message of ours
    NOT_OUTGOING = "not-outgoing"  # a status request about a message we received
    REFUSED = "refused"  # the store refused the operation (retry, supersede)
    KEY_REUSED = "key-reused"  # an idempotency key that stands for another request


class SendError(ValueError):
    """The message cannot be sent under this CPA; ``str()`` says why.

    ``refusal`` says which check refused; ``cpa_id``, ``party`` (as the door
    spelled it), ``sends`` (the sending side or not), ``service`` (its
    ``type:value``) and ``action`` are the subjects a door may word its own
    answer from.
    """

    def __init__(
        self,
        text: str,
        refusal: Refusal = Refusal.NOT_ALLOWED,
        *,
        cpa_id: str | None = None,
        party: str | None = None,
        sends: bool = True,
        service: str | None = None,
        action: str | None = None,
    ) -> None:
        super().__init__(text)
        self.refusal = refusal
        self.cpa_id = cpa_id
        self.party = party
        self.sends = sends
        self.service = service
        self.action = action


@dataclass(frozen=True)
class Addressing:
    """Who sends what to whom, as a front door names it.

    ``service``: a ``type:value`` string (looked up in the CPA), a
    :class:`Service` (taken as given), or None for the CPA's first service.
    ``from_party``/``to_party``: a ``type:value`` string (looked up), a
    :class:`PartyId` (taken as given), or None: the sender is then the first
    party that may send the action (one of ``prefer`` if any is), the
    receiver the CPA's other party.  Roles left None are derived.
    ``message_id`` is a client-chosen MessageId (refused if already sent).
    """

    cpa_id: str
    service: str | Service | None
    action: str
    from_party: str | PartyId | None = None
    from_role: str | None = None
    to_party: str | PartyId | None = None
    to_role: str | None = None
    message_id: str | None = None
    prefer: tuple[PartyId, ...] = ()


@dataclass(frozen=True)
class SendRoute:
    """A message's addressing resolved against its CPA: what ``queue_message`` sends on."""

    cpa_id: str
    from_party: PartyId
    from_role: str | None
    to_party: PartyId
    to_role: str | None
    service: Service
    action: str
    route: Route

    @property
    def endpoint(self) -> str:
        """Where the message is posted (resolution refuses a route without one)."""
        url = self.route.endpoint
        assert url is not None  # resolve_send and resolve_signal refused it
        return url


def resolve_send(cpa: Cpa, addressing: Addressing, now: datetime, *, duplicate: bool) -> SendRoute:
    """Resolve a business message's addressing in ``cpa`` at ``now``, in the doors' order.

    Service, sender and its role, receiver and its role, then the client's
    MessageId (``duplicate``: the store already holds it as ours), the CPA's
    validity and the channels (:func:`cpa.resolve.resolve`), and last the
    receiver's endpoint.  Raises :class:`SendError`.
    """
    a = addressing
    service = _service(cpa, a.service)
    skey = service.key()
    from_id, from_info = _sender(cpa, a, service)
    from_role = a.from_role
    if from_role is None:
        from_role = from_info.role_for(service, a.action, sends=True) if from_info else None
        if from_role is None:
            raise SendError(
                f"party {_spelling(a.from_party, from_id)} cannot send {skey} {a.action}",
                Refusal.CANNOT_SEND,
                cpa_id=cpa.cpa_id,
                party=_spelling(a.from_party, from_id),
                service=skey,
                action=a.action,
            )
    if a.to_party is None:
        if from_info is None:  # a sender the CPA does not know has no other party
            raise SendError(
                f"CPA {cpa.cpa_id} has no party {from_id.key()!r}",
                Refusal.NO_PARTY,
                cpa_id=cpa.cpa_id,
                party=from_id.key(),
            )
        to_info: PartyInfo | None = cpa.other_party(from_info)
        assert to_info is not None
        to_id = to_info.party_ids[0]
    else:
        to_id, to_info = _party(cpa, a.to_party, "toPartyId")
    to_role = a.to_role
    if to_role is None:
        to_role = to_info.role_for(service, a.action, sends=False) if to_info else None
        if to_role is None:
            raise SendError(
                f"party {to_id.key()} cannot receive {skey} {a.action}",
                Refusal.CANNOT_RECEIVE,
                cpa_id=cpa.cpa_id,
                party=to_id.key(),
                sends=False,
                service=skey,
                action=a.action,
            )
    if duplicate:
        raise SendError(f"message {a.message_id} already exists", Refusal.DUPLICATE)
    if not cpa.in_force(now):
        raise SendError(
            f"CPA {cpa.cpa_id} is not in force now", Refusal.NOT_IN_FORCE, cpa_id=cpa.cpa_id
        )
    route = _route(cpa, from_id, from_role, to_id, to_role, service, a.action)
    return SendRoute(cpa.cpa_id, from_id, from_role, to_id, to_role, service, a.action, route)


def resolve_signal(
    cpa: Cpa, from_party: str | PartyId, to_party: str | PartyId, action: str
) -> SendRoute:
    """Resolve an MSH request (Ping, StatusRequest) on the parties' MSH channels.

    Signals carry no roles and are sent whether or not the CPA is in force
    now: a Ping is how an operator finds out whether the link works at all
    (ebMS 2.0 §8).  Raises :class:`SendError`.
    """
    from_id, _ = _party(cpa, from_party, "fromPartyId")
    to_id, _ = _party(cpa, to_party, "toPartyId")
    service = Service(MSH_SERVICE)
    route = _route(cpa, from_id, None, to_id, None, service, action)
    return SendRoute(cpa.cpa_id, from_id, None, to_id, None, service, action, route)


def _service(cpa: Cpa, value: str | Service | None) -> Service:
    if isinstance(value, Service):
        return value
    # The StUF relay may leave it to the CPA: a DK CPA for one standard has one service.
    service = cpa.service_by_key(value) if value is not None else cpa.parties[0].roles[0].service
    if service is None:
        raise SendError(
            f"CPA {cpa.cpa_id} has no service {value!r}",
            Refusal.NO_SERVICE,
            cpa_id=cpa.cpa_id,
            service=value,
        )
    return service


def _sender(cpa: Cpa, a: Addressing, service: Service) -> tuple[PartyId, PartyInfo | None]:
    if a.from_party is not None:
        return _party(cpa, a.from_party, "fromPartyId")
    senders = [p for p in cpa.parties if p.role_for(service, a.action, sends=True) is not None]
    if a.prefer:
        senders = [p for p in senders if p.has_party_ids(a.prefer)] or senders
    if not senders:
        raise SendError(
            f"CPA {cpa.cpa_id} lets no party send {a.action}",
            Refusal.NO_SENDER,
            cpa_id=cpa.cpa_id,
            action=a.action,
        )
    return senders[0].party_ids[0], senders[0]


def _party(cpa: Cpa, value: str | PartyId | None, what: str) -> tuple[PartyId, PartyInfo | None]:
    """The party id and the CPA's PartyInfo holding it (None: unknown, judged later)."""
    if isinstance(value, PartyId):
        return value, cpa.party_by_ids((value,))
    assert value is not None  # only the receiver may be left out, and only with a sender
    try:
        pid = parse_party(value)
    except ValueError as exc:
        raise SendError(
            f"{what}: {exc}", Refusal.BAD_PARTY, party=value, sends=what == "fromPartyId"
        ) from None
    info = cpa.party_by_ids((pid,))
    if info is None:
        raise SendError(
            f"CPA {cpa.cpa_id} has no party {value!r}",
            Refusal.NO_PARTY,
            cpa_id=cpa.cpa_id,
            party=value,
            sends=what == "fromPartyId",
        )
    return pid, info


def _spelling(given: str | PartyId | None, pid: PartyId) -> str:
    """A party as the door named it: its own string, else ``type:value``."""
    return given if isinstance(given, str) else pid.key()


def _route(
    cpa: Cpa,
    from_id: PartyId,
    from_role: str | None,
    to_id: PartyId,
    to_role: str | None,
    service: Service,
    action: str,
) -> Route:
    try:
        route = resolve(
            cpa,
            from_ids=(from_id,),
            from_role=from_role,
            to_ids=(to_id,),
            to_role=to_role,
            service=service,
            action=action,
        )
    except ResolutionError as exc:
        raise SendError(
            f"not allowed by CPA {cpa.cpa_id}: {exc.location} {exc.description}",
            Refusal.NOT_ALLOWED,
            cpa_id=cpa.cpa_id,
        ) from None
    if route.endpoint is None:  # refuse before anything is stored
        raise SendError(
            f"the CPA gives {route.to_party.party_name!r} no endpoint",
            Refusal.NO_ENDPOINT,
            cpa_id=cpa.cpa_id,
        )
    return route
