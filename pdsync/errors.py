"""What can go wrong talking to Pipedrive, as exceptions the engine and the CLI tell apart."""

from __future__ import annotations


class PipedriveError(Exception):
    """A request to Pipedrive failed in a way retrying will not fix."""


class AuthError(PipedriveError):
    """401: the token is wrong or revoked. Fatal for the whole sync."""


class ConnectionFailed(PipedriveError):
    """The base URL could not be reached at all. Fatal for the whole sync."""


class BudgetSpent(PipedriveError):
    """Pipedrive's rate limit resets hours away: the daily token budget is spent. Fatal.

    ``until``: when it resets (``time.time()`` seconds), as Pipedrive said; None if unknown."""

    def __init__(self, message: str, until: float | None = None) -> None:
        super().__init__(message)
        self.until = until


class LoopingStream(PipedriveError):
    """Pipedrive sent a cursor or offset this stream had already followed."""
