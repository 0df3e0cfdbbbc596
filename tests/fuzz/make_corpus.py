"""Rebuild the committed seed corpus ``tests/fuzz/corpus/<target>/`` from the fixtures.

    python -m tests.fuzz.make_corpus

Seeds are small, valid (or nearly valid) inputs of each target: the ebms-core
message templates of tests/fixtures/messages, the CPAs and StUF messages of
tests/fixtures, and messages built with :mod:`tests.fuzz.material`.  Signed and
encrypted seeds made here carry the keys of a PKI that is thrown away; each run
adds fresh ones made with its own keys (``Target.seeds``), so these only give
the fuzzer the structure.  File names are content hashes: rerunning adds no
duplicates.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable
from pathlib import Path

from tests.fuzz.material import CORPUS_DIR, signed_message
from tests.fuzz.targets import TARGETS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
#: Small CPAs, one per profile family (the fixtures hold larger variants too).
CPAS = ("cpaStubEBF.be.http.unsigned.xml", "cpaStubEBF.rm.https.signed.encrypted.xml")


def _templates() -> Iterable[bytes]:
    from tests.messages import MESSAGES, render

    for path in sorted(MESSAGES.glob("*.xml")):
        if path.stem == "EbMSPingXXE":
            yield path.read_bytes()  # a DOCTYPE: refused, and it must stay refused
            continue
        yield render(path.stem, cids=("payload-1@fuzz.example",))


def _stuf(kind: str) -> Iterable[bytes]:
    if kind == "envelopes":
        for path in sorted((FIXTURES / "stuf" / "envelopes").glob("*.xml")):
            if path.stat().st_size < 4096:
                yield path.read_bytes()
        return
    for path in sorted((FIXTURES / "stuf").glob(f"{kind}/*/*.xml"))[:6]:
        yield path.read_bytes()


def seeds(name: str) -> Iterable[bytes]:
    """The committed seeds of target ``name``."""
    target = TARGETS[name]
    if name in ("mime", "edge", "inbound"):
        for xml in _templates():
            yield b"text/xml; charset=UTF-8\n" + xml
        m = signed_message(sign=False, boundary="MIMEBoundary_fuzz")
        yield m.content_type.encode() + b"\n" + m.body
    elif name == "envelope":
        yield from _templates()
    elif name == "cpa":
        for file in CPAS:
            yield (FIXTURES / "cpa" / file).read_bytes()
    elif name == "stuf_envelope":
        yield from _stuf("envelopes")
    elif name == "stuf_bare":
        for kind in ("iwmo", "ijw", "ieb"):
            yield from _stuf(kind)
    if target.seeds is not None:
        yield from target.seeds()


def main() -> int:
    for name in TARGETS:
        folder = CORPUS_DIR / name
        folder.mkdir(parents=True, exist_ok=True)
        count = 0
        for seed in seeds(name):
            (folder / hashlib.sha256(seed).hexdigest()).write_bytes(seed)
            count += 1
        print(f"{name}: {count} seeds", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
