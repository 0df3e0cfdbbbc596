"""The configuration file's sections, each declared once, and how they are read.

:mod:`gateway.settings.options` is the declaration mechanism,
:mod:`gateway.settings.registry` the list of sections (the gateway's own here,
the adapters' in their packages), :mod:`gateway.config` reads a whole file.
"""
