"""A saga definition in plain Python: its steps (action, compensation, participant topics,
timeout, retry limit), its typed data, and the states an instance goes through."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any, Generic, TypeVar

from txmq.errors import ConfigurationError, SagaError
from txmq.message import validate_name

D = TypeVar("D")


class SagaState(StrEnum):
    """Where a saga instance is."""

    #: Running its steps' actions forward.
    RUNNING = "RUNNING"
    #: A step failed or timed out (or an operator aborted it): undoing the steps done.
    COMPENSATING = "COMPENSATING"
    #: Every step's action succeeded.
    COMPLETED = "COMPLETED"
    #: Failed, and every step done was compensated.
    FAILED = "FAILED"
    #: A compensation failed or timed out more often than its retry limit: it waits for an
    #: operator (``txmq saga retry`` / :meth:`Orchestrator.retry`).
    PARKED = "PARKED"


#: States in which the orchestrator still has a command outstanding.
ACTIVE_STATES = (SagaState.RUNNING, SagaState.COMPENSATING)


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a saga.

    Args:
        name: the step's name (the participants' barrier branch), unique in its saga.
        action: the topic of the action command (the participant's).
        compensation: the topic of the compensation command; None for a step that cannot
            or need not be undone (e.g. the last one).
        timeout: how long the orchestrator waits for a reply before sending the command
            again (or, once the retries are used up, compensating).
        retries: how often an unanswered action is sent again before the saga fails.
        compensation_retries: how often a compensation is sent again (after a timeout or a
            failure reply) before the saga is parked.

    Raises:
        InvalidMessage: a name or topic is not valid.
        ConfigurationError: a timeout is not positive or a retry limit is negative.
    """

    name: str
    action: str
    compensation: str | None = None
    timeout: timedelta = timedelta(seconds=30)
    retries: int = 3
    compensation_retries: int = 10

    def __post_init__(self) -> None:
        validate_name(self.name, "saga step")
        validate_name(self.action, "topic")
        if self.compensation is not None:
            validate_name(self.compensation, "topic")
        if self.timeout <= timedelta(0):
            raise ConfigurationError(f"step {self.name!r}: timeout must be positive")
        if self.retries < 0 or self.compensation_retries < 0:
            raise ConfigurationError(f"step {self.name!r}: retry limits cannot be negative")


@dataclass(frozen=True, slots=True)
class SagaDefinition(Generic[D]):
    """A saga: a name, its ordered steps, and the type of its data.

    ``data`` is a dataclass (its fields JSON-able) or ``dict``; the orchestrator stores
    the data as JSON and every command carries it.

    Args:
        name: the saga's name; also names its reply topic ``<name>.saga-replies``.
        steps: the steps, run in order; compensated in reverse.
        data: the data's type.
        reply_topic: where participants reply (default ``<name>.saga-replies``).
        timeout_topic: where the step timeouts (delayed messages) go (default
            ``<name>.saga-timeouts``).

    Raises:
        InvalidMessage: the name is not valid.
        ConfigurationError: no steps, or two steps of one name.

    Example:
        >>> @dataclass
        ... class Order:
        ...     order_id: int
        ...     amount: int
        >>> order_saga = SagaDefinition(
        ...     name="order",
        ...     data=Order,
        ...     steps=[
        ...         Step("payment", action="payment.charge", compensation="payment.refund"),
        ...         Step("shipping", action="shipping.deliver"),
        ...     ],
        ... )
    """

    name: str
    steps: Sequence[Step]
    data: type[D]
    reply_topic: str = ""
    timeout_topic: str = ""
    _index: Mapping[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        validate_name(self.name, "saga name")
        if not self.steps:
            raise ConfigurationError(f"saga {self.name!r} has no steps")
        names = [step.name for step in self.steps]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"saga {self.name!r}: step names must be unique")
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "_index", {name: n for n, name in enumerate(names)})
        reply_topic = self.reply_topic or f"{self.name}.saga-replies"
        object.__setattr__(self, "reply_topic", validate_name(reply_topic, "topic"))
        timeout_topic = self.timeout_topic or f"{self.name}.saga-timeouts"
        object.__setattr__(self, "timeout_topic", validate_name(timeout_topic, "topic"))

    def index_of(self, step: str) -> int | None:
        """The position of the step named ``step``; None if there is none."""
        return self._index.get(step)

    def encode(self, data: D) -> dict[str, Any]:
        """``data`` as a JSON object.

        Raises:
            SagaError: it is neither an instance of a dataclass nor a mapping.
        """
        if dataclasses.is_dataclass(data) and not isinstance(data, type):
            return dataclasses.asdict(data)
        if isinstance(data, Mapping):
            return dict(data)
        raise SagaError(f"saga {self.name!r}: data must be a dataclass or a mapping")

    def decode(self, data: Mapping[str, Any]) -> D:
        """The saga data back from its JSON object."""
        if dataclasses.is_dataclass(self.data):
            return self.data(**data)
        return self.data(data)  # type: ignore[call-arg]  # a mapping type, e.g. dict
