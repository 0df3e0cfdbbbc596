"""Key and TLS material: what a configuration names, loaded once, and checked.

:mod:`gateway.material.load` reads the certificates, keys, chains and trust
anchors of a configuration into one :class:`~gateway.material.load.Material`
(``serve`` at start and at a reload, ``send`` and ``upload`` their message
security); :mod:`gateway.material.inspect` reads the same pairs for ``serve
--check``, as findings (a key that is not its certificate's, expiry, file
modes, trust), :mod:`gateway.material.findings` is what a finding is.
"""
