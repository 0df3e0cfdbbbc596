"""The WSDLs and XML schemas the gateway serves and validates against.

They ship inside the installed package (``pyproject.toml`` lists them as
package data) and are found through :mod:`importlib.resources`, so an
installed gateway reads the same files as a source checkout.  lxml resolves
``schemaLocation`` imports between them as files, so they must be on disk: an
install that is not (a zipped import) is refused with a clear error.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


class SchemaFilesMissing(RuntimeError):
    """The schema files are not available as files on disk."""


def _directory() -> Path:
    root = resources.files(__name__)
    path = Path(str(root))
    if not (path / "xsd" / "envelope.xsd").is_file():
        raise SchemaFilesMissing(
            f"the gateway's schema files are not on disk at {path}; "
            "install the dkgw package unzipped (pip installs it so)"
        )
    return path


WSDL_DIR: Path = _directory()
"""The folder holding the ``*.wsdl`` files."""

XSD_DIR: Path = WSDL_DIR / "xsd"
"""The folder holding the XML schemas (ebMS, SOAP, CPPA, StUF, iStandaarden)."""
