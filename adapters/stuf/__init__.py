"""StUF-GGk content layer: the ggk0210 envelope around iWmo/iJw/iEb payloads.

Protocol-core style (no I/O): :mod:`.catalogue` (message types and
directions), :mod:`.envelope` (wrap/unwrap), :mod:`.fo01` (StUF Fo01),
:mod:`.schemas` (XSD registry) and :mod:`.rules` (``check``).  See
``docs/stuf.md``.
"""
