"""Domain errors that every layer may raise; the API maps each to one HTTP status."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of the errors below; the message is what the user reads."""

    status_code = 400


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class Forbidden(ServiceError):
    status_code = 403
