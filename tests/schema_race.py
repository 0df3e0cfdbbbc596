"""Fresh processes compiling two schemas at once: the libxml2 start-up race.

Run as ``python -m tests.schema_race MODE RUNS``.  One interpreter imports
everything, compiles nothing, and forks ``RUNS`` children; each child is a
process whose libxml2 has never compiled a schema, and compiles the CPPA 2.0
schema and the schema of ``wsdl/ebms.wsdl`` from two threads released at the
same moment, then one more schema.  The last line printed is
``runs=N failed=M`` followed by the first failure seen.

MODE ``module`` compiles through :mod:`xmlsafe.schemas` (what the gateway
does); ``raw`` calls ``lxml.etree.XMLSchema`` directly, as the gateway did
before, and fails about twice in a thousand runs.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

from lxml import etree

from adapters.api.soap_http import WSDL_DIR, wsdl_schema
from cpa.parse import CPA_SCHEMA, _load_cpa_schema
from xmlsafe.schemas import Schema

_PROBE = b"""<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:element name="p" type="xs:dateTime"/></xs:schema>"""


def _compilers(mode: str) -> list[Callable[[], object]]:
    wsdl = wsdl_schema(WSDL_DIR / "ebms.wsdl")
    if mode == "module":
        return [CPA_SCHEMA.compile, wsdl.compile]
    load_wsdl = wsdl._load  # the loader only: parses, compiles nothing
    return [
        lambda: etree.XMLSchema(_load_cpa_schema()),
        lambda: etree.XMLSchema(load_wsdl()),
    ]


def _child(mode: str) -> int:
    barrier = threading.Barrier(2)
    errors: list[str] = []

    def run(compile_one: Callable[[], object]) -> None:
        barrier.wait()
        try:
            compile_one()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {' '.join(str(exc).split())}")

    threads = [threading.Thread(target=run, args=(c,)) for c in _compilers(mode)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        # After a lost race every later compilation fails too.
        Schema("probe", lambda: etree.fromstring(_PROBE), register=False).compile()
    except Exception as exc:
        errors.append(f"afterwards: {type(exc).__name__}: {' '.join(str(exc).split())}")
    if errors:
        print("; ".join(errors), flush=True)
        return 1
    return 0


def main(argv: list[str]) -> int:
    """Fork ``RUNS`` fresh children; print ``runs=N failed=M``; 0 when none failed."""
    mode, runs = argv[0], int(argv[1])
    if mode not in ("module", "raw"):
        raise SystemExit("MODE is module or raw")
    failed = 0
    for _ in range(runs):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                code = _child(mode)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        failed += os.waitstatus_to_exitcode(status) != 0
    print(f"runs={runs} failed={failed}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
