"""The REST API (DESIGN §4): one router per resource, aggregated by :func:`create_app`."""
from .app import create_app

__all__ = ["create_app"]
