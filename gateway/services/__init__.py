"""The gateway's parts as ``twisted.application`` services.

:mod:`gateway.services.loop` drives every background loop (one tick at a time,
on an interval, woken early on demand); :mod:`gateway.services.ordered` holds
the services of one process and stops them one after the other, in the reverse
of the order they started; :mod:`gateway.services.listener` is a listening
port as a service.  ``gateway/serve.py`` composes them.
"""
