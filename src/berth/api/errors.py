"""The one table from berth error kinds to HTTP status codes, and the error response Docker clients expect."""

from __future__ import annotations

import logging

from berth import errors
from berth.api.http import Response, json_response

log = logging.getLogger("berth.api")

# First match wins, so subclasses (NoSuchImage < NotFound) need no rows of their own.
STATUS_BY_KIND: tuple[tuple[type[errors.BerthError], int], ...] = (
    (errors.InvalidArgument, 400),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.NotModified, 304),
    (errors.NotImplementedYet, 501),
    (errors.Unavailable, 503),
    (errors.InternalError, 500),
)


def status_for(err: BaseException) -> int:
    """The HTTP status for an exception; anything that is not a berth kind is a 500."""
    for kind, status in STATUS_BY_KIND:
        if isinstance(err, kind):
            return status
    return 500


def message_for(err: BaseException) -> str:
    return str(err) or type(err).__name__


def error_response(err: BaseException) -> Response:
    """``{"message": ...}`` with the mapped status (304 carries no body); unexpected errors are logged."""
    status = status_for(err)
    if not isinstance(err, errors.BerthError):
        log.error("unexpected error: %s", message_for(err), exc_info=err)
    if status == 304:
        return Response(status=304)
    return json_response({"message": message_for(err)}, status=status)
