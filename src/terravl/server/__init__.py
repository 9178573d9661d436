"""``terravl serve``: the HTTP API and web map over one or more archive indexes."""

from terravl.server.app import create_app

__all__ = ["create_app"]
