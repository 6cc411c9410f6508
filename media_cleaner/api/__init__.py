"""The REST API (the endpoints and error conventions of the README's "Endpoints"): one router per resource, aggregated by :func:`create_app`."""
from media_cleaner.api.app import create_app

__all__ = ["create_app"]
