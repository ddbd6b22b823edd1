"""When a failed message is retried, after how long, and when it is given up."""

from __future__ import annotations

from dataclasses import dataclass, field

from txmq.consumer.errors import Reject
from txmq.errors import ConfigurationError, MessageDecodeError

#: Errors no policy can make retryable: retrying cannot fix them.
ALWAYS_FINAL: tuple[type[BaseException], ...] = (Reject, MessageDecodeError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a consumer handles a failing handler.

    Attempt ``n`` (1-based) that fails with a retryable error is retried after
    ``delays[n-1]`` seconds (the last delay repeats when ``max_attempts`` is larger than
    ``len(delays) + 1``); the broker holds the message meanwhile. After ``max_attempts``
    attempts, or at once for a non-retryable error, the message goes to the dead-letter queue.

    Args:
        delays: seconds before each retry; ``()`` means no retry.
        max_attempts: total attempts, first delivery included; ``len(delays) + 1`` when omitted.
        retryable: exception types worth retrying.
        non_retryable: exception types sent to the DLQ at once; checked before ``retryable``.
            :class:`~txmq.Reject` and :class:`~txmq.MessageDecodeError` always are.

    Raises:
        ConfigurationError: a delay is not positive, or ``max_attempts`` < 1, or
            ``max_attempts`` > 1 without any delay.

    Example:
        >>> RetryPolicy(delays=(1, 5, 30), non_retryable=(ValueError,)).max_attempts
        4
    """

    delays: tuple[float, ...] = (1.0, 5.0, 30.0)
    max_attempts: int = field(default=0)
    retryable: tuple[type[BaseException], ...] = (Exception,)
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        delays = tuple(float(d) for d in self.delays)
        if any(d <= 0 for d in delays):
            raise ConfigurationError("retry delays must be positive seconds")
        object.__setattr__(self, "delays", delays)
        if self.max_attempts == 0:
            object.__setattr__(self, "max_attempts", len(delays) + 1)
        if self.max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        if self.max_attempts > 1 and not delays:
            raise ConfigurationError("retrying needs at least one delay")

    @classmethod
    def no_retry(cls) -> RetryPolicy:
        """Every failure goes to the DLQ at once."""
        return cls(delays=(), max_attempts=1)

    @classmethod
    def best_effort(cls, attempts: int = 3, delay: float = 5.0) -> RetryPolicy:
        """Notification mode: ``attempts`` tries ``delay`` seconds apart, then give up.

        Giving up parks the message in the group's DLQ (the record of what was not
        delivered; it can be replayed), never drops it.
        """
        return cls(delays=(delay,) * max(attempts - 1, 0), max_attempts=attempts)

    def is_final(self, exc: BaseException, attempt: int) -> bool:
        """True if a failure with ``exc`` at ``attempt`` must go to the DLQ now."""
        if isinstance(exc, ALWAYS_FINAL + self.non_retryable):
            return True
        return attempt >= self.max_attempts or not isinstance(exc, self.retryable)

    def stage(self, attempt: int) -> int:
        """The retry stage (1-based) a failure of ``attempt`` waits in."""
        return min(attempt, len(self.delays))

    def delay(self, attempt: int) -> float:
        """Seconds before the attempt after ``attempt``."""
        return self.delays[self.stage(attempt) - 1]
