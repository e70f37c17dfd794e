"""The OpenAPI 3.1 document, generated from the endpoints' declared types (never by hand).

Schemas come from msgspec (``msgspec.json.schema_components``), so the document and the
decoder that checks requests are the same declarations.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from chronik._version import __version__
from chronik.server.routing import Endpoint, ErrorBody

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{name}"
_PATH_PARAM = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)(?::[a-z]+)?}")
_TEXT = {"type": "string", "minLength": 1}
_PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "id": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
    "stream_id": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": "^[^$\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$",
        "description": "at most 255 UTF-8 bytes, no control characters, not starting with $",
    },
}
_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted: not yet applied (pending)",
    204: "No Content",
    400: "Bad request (typed error body)",
    404: "Not found",
    409: "Conflict",
    401: "No, malformed, unknown, expired or revoked credentials (WWW-Authenticate: Bearer)",
    403: "The principal's roles do not grant this operation on this category",
    413: "Payload too large (refused before parsing)",
    415: "Unsupported media type",
    422: "Unprocessable body",
    429: "Too many requests for this principal (Retry-After)",
    503: "Store unavailable (retry later)",
    504: "Timed out waiting",
}


PUBLIC_PATHS = frozenset({"/health", "/openapi.json"})
"""Paths served without credentials even under a policy (docs/security.md)."""


def openapi_document(
    endpoints: Sequence[Endpoint], *, title: str = "chronik", secured: bool = False
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``endpoints`` (``secured``: served under a policy, so
    every endpoint but the public ones documents 401, 403 and 429 and bearer auth)."""
    types: list[Any] = [ErrorBody]
    for ep in endpoints:
        if ep.body is not None:
            types.append(ep.body)
        types.extend(t for t in ep.responses.values() if t is not None)
    (_, components) = msgspec.json.schema_components(types, ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        path = _PATH_PARAM.sub(r"{\1}", ep.path)
        op: dict[str, Any] = {
            "operationId": ep.operation_id,
            "summary": ep.summary,
            "tags": [ep.tag],
            "parameters": _parameters(ep),
            "responses": _responses(ep, secured and ep.path not in PUBLIC_PATHS),
        }
        if secured and ep.path in PUBLIC_PATHS:
            op["security"] = []
        if ep.body is not None:
            (schema,), _ = msgspec.json.schema_components([ep.body], ref_template=_REF)
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema}},
            }
        paths.setdefault(path, {})[ep.method.lower()] = op
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": __version__,
            "description": "chronik's HTTP API: append, read, follow and operate an event "
            "store. Positions are strings (PostgreSQL positions pass 2^53). See docs/http.md.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }
    if secured:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "an API token (chronik tokens create) or an OIDC JWT"}
        }  # fmt: skip
        document["security"] = [{"bearer": []}]
    return document


def _parameters(ep: Endpoint) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": _PATH_SCHEMAS.get(name, _TEXT)}
        for name in _PATH_PARAM.findall(ep.path)
    ]
    if ep.query is not None:
        _, components = msgspec.json.schema_components([ep.query], ref_template=_REF)
        struct = components[ep.query.__name__]
        required = set(struct.get("required", ()))
        for name, prop in struct.get("properties", {}).items():
            param: dict[str, Any] = {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": prop,
            }
            if prop.get("type") == "array" or any(
                p.get("type") == "array" for p in prop.get("anyOf", ())
            ):
                param["style"] = "form"
                param["explode"] = True
            params.append(param)
    for name, description in ep.headers.items():
        params.append(
            {
                "name": name,
                "in": "header",
                "required": False,
                "description": description,
                "schema": {"type": "string"},
            }
        )
    return params


def _responses(ep: Endpoint, secured: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, body in ep.responses.items():
        entry: dict[str, Any] = {"description": _REASONS.get(status, "OK")}
        if body is not None:
            entry["content"] = {
                "application/json": {"schema": {"$ref": _REF.format(name=body.__name__)}}
            }
        out[str(status)] = entry
    error = {"application/json": {"schema": {"$ref": _REF.format(name="ErrorBody")}}}
    secured_errors = (401, 403, 429) if secured else ()
    for status in sorted({*ep.errors, *secured_errors, 503}):
        out.setdefault(
            str(status), {"description": _REASONS.get(status, "Error"), "content": error}
        )
    return out
