"""Errors a channel integration raises; each says whether retrying can help."""

from __future__ import annotations


class PayloadError(ValueError):
    """A signed webhook whose body cannot be turned into canonical events (goes to quarantine)."""


class ChannelError(RuntimeError):
    """A channel API call failed. `retryable` tells the caller whether backing off and retrying can help."""

    def __init__(
        self, message: str, *, status: int | None, retryable: bool, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class CompareMismatch(ChannelError):
    """A compare-and-set write found another count than expected: something changed it on the channel side
    (a sale whose webhook is still on its way, or a manual edit). `current` is the count found, if known."""

    def __init__(self, message: str, *, current: int | None) -> None:
        super().__init__(message, status=200, retryable=False)
        self.current = current


def error_for_status(channel: str, status: int, body: str, retry_after: str | None) -> ChannelError:
    """Classify an HTTP failure: 429, 5xx and 409 are worth retrying; other 4xx are not."""
    retry_after_s: float | None = None
    if retry_after:
        try:
            retry_after_s = max(0.0, float(retry_after))
        except ValueError:
            retry_after_s = None
    retryable = status == 429 or status == 409 or status >= 500
    return ChannelError(
        f"{channel} answered HTTP {status}: {body[:300]}",
        status=status,
        retryable=retryable,
        retry_after_s=retry_after_s,
    )
