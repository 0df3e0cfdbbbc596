"""Message security on payloads that are spooled files rather than bytes."""

from __future__ import annotations

import io
from typing import IO

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.ebms.checks import CheckFailed
from gateway.ebms.xmlenc import DEFAULT_MAX_ENCRYPTED_BYTES, ENCRYPTED_CONTENT_TYPE
from gateway.msh.security import MessageSecurity, _decrypt
from gateway.store.messages import AttachmentRecord

HEAD = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<xenc:EncryptedData xmlns:xenc="http://www.w3.org/2001/04/xmlenc#" '
    b'Type="http://www.w3.org/2001/04/xmlenc#Content">'
)


class HugeSpool:
    """A spooled part that claims to be over the cap; only its head may be read."""

    size = DEFAULT_MAX_ENCRYPTED_BYTES + 1
    sha256 = "0" * 64

    def __init__(self) -> None:
        self.reads: list[int] = []

    def open(self) -> IO[bytes]:
        spool = self

        class Head(io.BytesIO):
            def read(self, n: int | None = -1) -> bytes:
                spool.reads.append(-1 if n is None else n)
                return super().read(n)

        return Head(HEAD)

    def close(self) -> None:
        pass


def test_oversized_encrypted_spool_is_refused_before_it_is_read() -> None:
    spool = HugeSpool()
    part = AttachmentRecord("big@x", ENCRYPTED_CONTENT_TYPE, spool)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(CheckFailed) as caught:
        _decrypt([part], MessageSecurity(encryption_key=key), "cpa")
    assert caught.value.error.location == "cid:big@x"
    assert f"the limit is {DEFAULT_MAX_ENCRYPTED_BYTES}" in (caught.value.error.description or "")
    # Only the sniffed head was read, never the whole part.
    assert spool.reads and all(n > 0 for n in spool.reads)
