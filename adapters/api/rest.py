"""REST API placeholder (being written)."""

from __future__ import annotations

from typing import Any

from twisted.web import resource

from adapters.api.service import BackOffice


class RestApi(resource.Resource):
    """ebms-core's REST API v19."""

    isLeaf = True

    def __init__(self, backoffice: BackOffice, run_in_thread: Any, reactor: Any) -> None:
        super().__init__()
        self.backoffice = backoffice
        self.run_in_thread = run_in_thread
        self.reactor = reactor
