"""Fault tests: real ``dkgw serve`` processes killed, starved of their store, or facing a
partner that misbehaves; every accepted message must still arrive exactly once.

``make faults`` runs them with larger counts (``DKGW_FAULTS_SCALE``).
"""
