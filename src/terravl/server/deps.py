"""Dependencies the routers declare: the one :class:`~terravl.server.service.Service` of the application."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from terravl.server.service import Service


def get_service(request: Request) -> Service:
    """The service stored on the application at creation (tests may swap it in ``app.state.service``)."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]

MAX_ID = 2**63 - 1
"""Largest tile id (SQLite's integer): larger ids are refused (422) before they reach the index."""
