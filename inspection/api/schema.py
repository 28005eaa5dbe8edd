"""The error answers every API operation can give, in the OpenAPI schema.

Every error the API gives is ``{"error": "<the reason in words>", ...}`` (``inspection/api/
errors.py``: a 400 adds ``detail``, the fields and their messages; a 409 adds ``current``, what
is stored now). drf-spectacular documents each operation's success only; this postprocessing
hook adds the errors that operation can answer, so that the schema says what clients get
(schemathesis' "undocumented status code" check, docs/api.md):

- 400 on writes, and where query parameters or an id in the path (a UUID) are validated;
- 401 and 403 where a sign-in is needed (not signed in / role too low or not allowed);
- 404 where the path names an object (unknown, or in a project the caller is not a member of);
- 409 and 503 on writes (someone changed it meanwhile / the job queue is down);
- 429 where anyone may call (the sign-in token endpoint is throttled).
"""

from __future__ import annotations

ERROR_SCHEMA = {
    "type": "object",
    "description": "An error: `error` says why in words.",
    "properties": {
        "error": {"type": "string"},
        "detail": {"description": "For a 400: each field with its messages."},
        "current": {"description": "For a 409: what is stored now.", "nullable": True},
    },
    "required": ["error"],
}

WORDS = {
    "400": "The request is not valid (the error says which field and why).",
    "401": "Not signed in (session or token).",
    "403": "Signed in, but not allowed (role too low, or site admins only).",
    "404": "No such object, or it is in a project you are not a member of.",
    "409": "Someone changed or decided it meanwhile (`current` is what is stored now).",
    "429": "Too many failed attempts: wait (Retry-After) and try again.",
    "503": "The job queue is not answering: what was stored is kept and starts later.",
}


def error_responses(result, generator, request, public):
    """drf-spectacular postprocessing hook (SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"])."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    ref = {"$ref": "#/components/schemas/Error"}
    for path, operations in result.get("paths", {}).items():
        for method, op in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            anonymous = {} in op.get("security", [{}])
            codes = []
            params = op.get("parameters", [])
            uuid_in_path = any(
                p.get("in") == "path" and p.get("schema", {}).get("format") == "uuid"
                for p in params
            )
            if method != "get" or uuid_in_path or any(p.get("in") == "query" for p in params):
                codes.append("400")
            if anonymous:
                codes.append("429")
            else:
                codes += ["401", "403"]
            if "{" in path:
                codes.append("404")
            if method != "get":
                codes += ["409", "503"]
            responses = op.setdefault("responses", {})
            for code in codes:
                responses.setdefault(
                    code,
                    {"description": WORDS[code], "content": {"application/json": {"schema": ref}}},
                )
    return result
