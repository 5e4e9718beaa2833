"""The kinds of error berth raises, one tree under ``BerthError``.

Imports only the standard library. The HTTP status for each kind lives in exactly one table
(``berth.api.errors``); foreign exceptions are translated into these kinds once, at the boundary.

    BerthError
    ├── InvalidArgument      bad input from a client (400)
    ├── NotFound             no such object (404)
    ├── Conflict             the object is in a state that forbids the request (409)
    ├── NotModified          nothing to do: already in the requested state (304)
    ├── Forbidden            never allowed, e.g. removing a predefined network (403)
    ├── Unauthorized         credentials missing or wrong (401)
    ├── NotImplementedYet    a Docker feature berth does not do (yet) (501)
    ├── Unavailable          a dependency is not there right now (503)
    └── InternalError        a bug or an unexpected host failure (500)
"""

from __future__ import annotations


class BerthError(Exception):
    """Root of every error berth raises on purpose; ``str(err)`` is the user-facing message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(BerthError):
    """The request is malformed or names something impossible."""


class NotFound(BerthError):
    """The named object does not exist."""


class Conflict(BerthError):
    """The object exists but its state forbids the request."""


class NotModified(BerthError):
    """The object is already in the requested state."""


class Forbidden(BerthError):
    """The request is never allowed for this object."""


class Unauthorized(BerthError):
    """Credentials are missing or were refused."""


class NotImplementedYet(BerthError):
    """A Docker feature berth does not provide."""


class Unavailable(BerthError):
    """Something berth depends on cannot be reached now."""


class InternalError(BerthError):
    """An unexpected failure; the message is still shown to the user."""


class NoSuchImage(NotFound):
    """An image reference that resolves to nothing (Docker's wording, which clients match on)."""

    def __init__(self, ref: str) -> None:
        super().__init__(f"No such image: {ref}")
        self.ref = ref
