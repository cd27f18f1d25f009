"""The gateway's JSON answers to people: an error (``{"error": message, ...}``), and a request body read as a
pydantic model or refused with what each field must be (400 not JSON, 422 its content). One home for the
admin API, availability and reservations, so a refusal reads the same everywhere."""

from __future__ import annotations

from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

M = TypeVar("M", bound=BaseModel)

# pydantic error types that mean "not a whole number in range": answered with the field's range
_NUMBER_ERRORS = frozenset(
    {"greater_than_equal", "less_than_equal", "int_type", "int_parsing", "int_from_float", "int_parsing_size"}
)


def error(status: int, message: str, **extra: Any) -> web.Response:
    """A JSON error answer (``{"error": message, ...}``); a 401 names the scheme to use."""
    headers = {"WWW-Authenticate": 'Bearer realm="stocksync"'} if status == 401 else None
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


def problem(model: type[BaseModel], error: ErrorDetails) -> str:
    """One refused field of a request body for a person: ``field: what it must be (got what)``."""
    field = ".".join(map(str, error["loc"])) or "body"
    info = model.model_fields.get(str(error["loc"][0])) if error["loc"] else None
    if info is not None and error["type"] in _NUMBER_ERRORS:
        # the field's Ge/Le constraints (schemas.base Count, Quantity)
        low = next((m.ge for m in info.metadata if hasattr(m, "ge")), None)
        high = next((m.le for m in info.metadata if hasattr(m, "le")), None)
        if low is not None and high is not None:
            return f"{field}: must be a whole number between {low} and {high} (got {error['input']!r})"
    if error["type"] == "model_type":
        return f"body: must be a JSON object with the fields {', '.join(model.model_fields)}"
    if error["type"] == "extra_forbidden":
        return f"{field}: not a field of this request; allowed: {', '.join(model.model_fields)}"
    return f"{field}: {error['msg']}"


def body_as(model: type[M], raw: bytes, *, refused: str = "invalid request body") -> M | web.Response:
    """`raw` as `model`; else the answer: 400 if it is not JSON, 422 naming each refused field."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            return error(400, f"the request body is not JSON: {errors[0]['msg']}; send a JSON object")
        return error(422, f"{refused}: {'; '.join(problem(model, e) for e in errors)}")
