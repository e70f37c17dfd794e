"""chronik's HTTP face: a JSON API with a generated OpenAPI document (``chronik serve``).

Needs the ``server`` extra (``pip install 'chronik[server]'``): Starlette and uvicorn.
"""

from chronik.server.app import DEFAULT_MAX_BODY_BYTES, create_app, create_app_for_url

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app", "create_app_for_url"]
