"""The ebMS 2.0 protocol core: envelopes, MIME packaging, signatures, encryption, checks.

Plain functions over bytes and small values: no store, no sockets, no configuration,
no Twisted (the import contracts in pyproject.toml hold it so).  The MSH
(:mod:`gateway.msh`) reads the store and calls these.
"""
