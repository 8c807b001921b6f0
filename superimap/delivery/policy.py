"""What each webhook answer means: the delivery's next step and its endpoint's health.

Pure (no Django, no asyncio, no database): `queue.py` writes what `delivery_step` decides,
`health.py` what `endpoint_step` decides, `worker.py` sends. The one table of answers:

| answer                       | verdict           | the delivery                   | endpoint  |
| ---------------------------- | ----------------- | ------------------------------ | --------- |
| (no URL for the kind)        | SKIPPED           | `skipped`, nothing sent        | -         |
| 200-206                      | DELIVERED         | `delivered`                    | success   |
| 403 Forbidden                | REFUSED           | `cancelled`; its user archived | success   |
|                              |                   | (not a tracer user)            |           |
| 410 Gone                     | GONE              | `cancelled`                    | disabled  |
| 429, delivery younger than   | RATE_LIMITED      | `pending`: Retry-After, else   | paused    |
| the free window              |                   | the next step; uses no step    |           |
|                              |                   | and no attempt of the round    |           |
| 429, delivery older          | RATE_LIMITED_LONG | a failure (below)              | paused,   |
|                              |                   |                                | a failure |
| anything else: 1xx, 207+,    | FAILED            | a failure: `pending` at the    | failure   |
| 3xx, other 4xx, 5xx, timeout,|                   | next step (at least its        |           |
| connection error, refused    |                   | Retry-After: 503), `failed`    |           |
| target                       |                   | once the round is spent        |           |

- Steps: `schedule[failures]` (WEBHOOK_RETRY_SCHEDULE, ±20 %), where `failures` counts the
  real failures of the delivery's current round (`Delivery.failures`), not its attempts.
  A round has `len(schedule) + 1` attempts; a manual retry or replay starts a new one.
- Retry-After (429, 503) is capped at WEBHOOK_RETRY_AFTER_MAX; without one, a free 429
  waits as long as the delivery's next failure would and the endpoint's pause is the first
  step. The free window is twice the schedule's span, at least a day: a receiver answering
  429 forever cannot keep a delivery pending forever.
- Endpoint (per partner and kind): a success sets the failure count to 0; a `failing`
  endpoint has recovered (its deliveries of the last WEBHOOK_AUTO_REPLAY_HOURS are
  re-queued); a `disabled` one had a new URL set. WEBHOOK_FAILING_AFTER failures in a row
  make a `healthy` endpoint `failing`. A pause only ever grows. A 410 disables the endpoint
  once (its URL is switched off); a disabled endpoint stays disabled through failures.

Why 403 and 429 read as they do (the queue and the health module used to disagree on the
429 past its free window: a failure for the delivery, not for the endpoint): a 403 is a
deliberate answer about one user, so the endpoint works; a 429 that has lasted longer than
the free window is a receiver that does not take its mail, so it counts against the
endpoint too (the operator sees it `failing`, and its recovery re-queues what failed
meanwhile), while its Retry-After is still honoured for the whole endpoint.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

RETRY_JITTER = 0.2
DEFAULT_SCHEDULE = (10, 60, 360, 2160, 12960, 77760)
ERROR_TEXT_MAX = 1024


class Verdict(enum.Enum):
    SKIPPED = "skipped"
    DELIVERED = "delivered"
    REFUSED = "refused"
    GONE = "gone"
    RATE_LIMITED = "rate_limited"
    RATE_LIMITED_LONG = "rate_limited_long"
    FAILED = "failed"


class Effect(enum.Flag):
    """What an answer says about its endpoint (none of these: nothing)."""

    SUCCESS = enum.auto()
    FAILURE = enum.auto()
    PAUSE = enum.auto()
    DISABLE = enum.auto()


NOTHING = Effect(0)


@dataclass(frozen=True)
class Rule:
    delivery: str
    """The delivery's status after the answer (a retry: "failed" once the round is spent)."""
    endpoint: Effect
    retries: bool = False
    """A real failure: uses a step of the schedule and one of the round's attempts."""
    free_wait: bool = False
    """Waits like a retry but uses neither a step nor an attempt (a 429 in its free window)."""
    error: str | None = None
    """The delivery's last_error ({kind}: its kind); None: the answer's error or status."""
    archives_user: bool = False


# The table of the module docstring: `classify` picks the row (a verdict), RULES says
# what it does.
STATUSES: Mapping[int, Verdict] = {
    403: Verdict.REFUSED,
    410: Verdict.GONE,
    429: Verdict.RATE_LIMITED,
}
SUCCESS_CODES = range(200, 207)
RULES: Mapping[Verdict, Rule] = {
    Verdict.SKIPPED: Rule("skipped", NOTHING, error="partner has no {kind} webhook URL"),
    Verdict.DELIVERED: Rule("delivered", Effect.SUCCESS, error=""),
    Verdict.REFUSED: Rule(
        "cancelled",
        Effect.SUCCESS,
        error="receiver answered 403 Forbidden: user archived",
        archives_user=True,
    ),
    Verdict.GONE: Rule(
        "cancelled", Effect.DISABLE, error="receiver answered 410 Gone: {kind} webhook URL disabled"
    ),
    Verdict.RATE_LIMITED: Rule("pending", Effect.PAUSE, free_wait=True),
    Verdict.RATE_LIMITED_LONG: Rule("pending", Effect.PAUSE | Effect.FAILURE, retries=True),
    Verdict.FAILED: Rule("pending", Effect.FAILURE, retries=True),
}


class Answer(Protocol):
    """What the receiver said (delivery/http.py's PostResult)."""

    @property
    def status_code(self) -> int | None: ...

    @property
    def error(self) -> str: ...

    @property
    def retry_after(self) -> float | None: ...


@dataclass(frozen=True)
class Config:
    schedule: tuple[int, ...] = DEFAULT_SCHEDULE
    retry_after_max: float = 3600
    failing_after: int = 5
    auto_replay_hours: int = 72

    @classmethod
    def from_settings(cls, settings: Any) -> Config:
        """From django.conf.settings (read at each call: tests override them)."""
        return cls(
            schedule=tuple(settings.WEBHOOK_RETRY_SCHEDULE),
            retry_after_max=settings.WEBHOOK_RETRY_AFTER_MAX,
            failing_after=settings.WEBHOOK_FAILING_AFTER,
            auto_replay_hours=settings.WEBHOOK_AUTO_REPLAY_HOURS,
        )

    @property
    def free_429_window(self) -> timedelta:
        """A 429 uses no retry while the delivery is younger than this."""
        return timedelta(seconds=max(2 * sum(self.schedule), 86400))


def attempts_per_round(schedule: Sequence[int]) -> int:
    """The first send plus one retry per step of the schedule."""
    return len(schedule) + 1


def succeeded(status_code: int | None) -> bool:
    return status_code is not None and status_code in SUCCESS_CODES


def classify(status_code: int | None, *, has_url: bool, age: timedelta, config: Config) -> Verdict:
    """The row of the table for one attempt; `age` is how old the delivery is."""
    if not has_url:
        return Verdict.SKIPPED
    if status_code is None:
        return Verdict.FAILED
    if status_code in SUCCESS_CODES:
        return Verdict.DELIVERED
    verdict = STATUSES.get(status_code, Verdict.FAILED)
    if verdict is Verdict.RATE_LIMITED and age >= config.free_429_window:
        return Verdict.RATE_LIMITED_LONG
    return verdict


def error_text(answer: Answer) -> str:
    """How an attempt's failure is stored: the client's error, else the HTTP status."""
    text = answer.error or (f"HTTP {answer.status_code}" if answer.status_code else "")
    return text[:ERROR_TEXT_MAX]


def retry_delay(failure: int, config: Config, rng: random.Random | None = None) -> timedelta:
    """Delay after real failure number `failure` (1-based) of the current round, ±20 %."""
    uniform = (rng or random).uniform
    schedule = config.schedule
    seconds = schedule[min(max(failure, 1), len(schedule)) - 1]
    return timedelta(seconds=seconds * uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER))


def retry_after_delay(
    retry_after: float | None, failures: int, config: Config, rng: random.Random | None = None
) -> timedelta:
    """How long a 429/503 makes us wait: Retry-After if given (capped), else the step the
    next failure would wait (`failures` so far in the round; not used up)."""
    if retry_after is not None:
        return timedelta(seconds=min(retry_after, config.retry_after_max))
    return retry_delay(failures + 1, config, rng)


# --- The delivery ------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryStep:
    status: str
    last_error: str
    delay: timedelta | None = None
    """pending: due again after this long."""
    uses_step: bool = False
    """Delivery.failures + 1."""
    grants_attempt: bool = False
    """Delivery.max_attempts + 1 (a free 429 costs no attempt of the round)."""
    archive_user: bool = False


def delivery_step(
    verdict: Verdict,
    answer: Answer,
    *,
    kind: str,
    attempt: int,
    max_attempts: int,
    failures: int,
    config: Config,
    rng: random.Random | None = None,
) -> DeliveryStep:
    """Where one attempt (number `attempt`, after `failures` real failures this round)
    moves its delivery."""
    rule = RULES[verdict]
    error = error_text(answer) if rule.error is None else rule.error.format(kind=kind)
    if rule.free_wait:
        delay = retry_after_delay(answer.retry_after, failures, config, rng)
        return DeliveryStep(rule.delivery, error, delay, grants_attempt=True)
    if not rule.retries:
        return DeliveryStep(rule.delivery, error, archive_user=rule.archives_user)
    if attempt >= max_attempts:
        return DeliveryStep("failed", error, uses_step=True)
    delay = retry_delay(failures + 1, config, rng)
    if answer.retry_after is not None:  # 503 (or a long 429) + Retry-After: not sooner
        delay = max(delay, retry_after_delay(answer.retry_after, failures + 1, config, rng))
    return DeliveryStep(rule.delivery, error, delay, uses_step=True)


# --- The endpoint --------------------------------------------------------------------------


class State(enum.StrEnum):
    HEALTHY = "healthy"
    FAILING = "failing"
    DISABLED = "disabled"


@dataclass(frozen=True)
class Endpoint:
    state: State = State.HEALTHY
    consecutive_failures: int = 0
    paused_until: datetime | None = None


GONE_ERROR = "410 Gone: URL disabled"


@dataclass(frozen=True)
class EndpointStep:
    after: Endpoint
    succeeded: bool = False
    """last_success_at = now."""
    failure: str | None = None
    """last_failure_at = now, last_error = this."""
    became_failing: bool = False
    """failing_since = now; tell the operator."""
    recovered: bool = False
    """failing_since = None; tell the operator; re-queue `replay` if given."""
    replay: tuple[datetime, datetime] | None = None
    disabled: bool = False
    """Switch the kind's URL off; tell the operator."""
    paused: bool = False
    """The pause grew: hold the endpoint's pending deliveries until after.paused_until."""


def endpoint_step(
    endpoint: Endpoint,
    verdict: Verdict,
    answer: Answer,
    now: datetime,
    config: Config,
    rng: random.Random | None = None,
) -> EndpointStep:
    """How one attempt's answer moves its endpoint."""
    effect = RULES[verdict].endpoint
    if Effect.SUCCESS in effect:
        recovered = endpoint.state is State.FAILING
        replay = None
        if recovered and config.auto_replay_hours:
            replay = (now - timedelta(hours=config.auto_replay_hours), now)
        after = replace(endpoint, state=State.HEALTHY, consecutive_failures=0)
        return EndpointStep(after, succeeded=True, recovered=recovered, replay=replay)
    if Effect.DISABLE in effect:
        if endpoint.state is State.DISABLED:
            return EndpointStep(endpoint)
        after = replace(endpoint, state=State.DISABLED)
        return EndpointStep(after, failure=GONE_ERROR, disabled=True)
    step = EndpointStep(endpoint)
    if Effect.FAILURE in effect:
        step = _failed(step, answer, config)
    if Effect.PAUSE in effect:
        # The endpoint's pause uses no step of any delivery: the first one without Retry-After.
        until = now + retry_after_delay(answer.retry_after, 0, config, rng)
        paused_until = step.after.paused_until
        if paused_until is None or until > paused_until:
            step = replace(step, after=replace(step.after, paused_until=until), paused=True)
    return step


def _failed(step: EndpointStep, answer: Answer, config: Config) -> EndpointStep:
    failures = step.after.consecutive_failures + 1
    after = replace(step.after, consecutive_failures=failures)
    became_failing = after.state is State.HEALTHY and failures >= config.failing_after
    if became_failing:
        after = replace(after, state=State.FAILING)
    return replace(step, after=after, failure=error_text(answer), became_failing=became_failing)


def writes_nothing(verdicts: Iterable[Verdict], endpoint: Endpoint | None) -> bool:
    """The common case, successes to a healthy endpoint (or one without a row yet): no
    write. Any other answer, or a row to reset, goes through endpoint_step."""
    if endpoint is not None and (
        endpoint.state is not State.HEALTHY or endpoint.consecutive_failures
    ):
        return False
    return all(RULES[verdict].endpoint == Effect.SUCCESS for verdict in verdicts)


# --- When the worker claims (worker.py, design.md 5.1) ------------------------------------


class ClaimState(NamedTuple):
    """What the worker knows between claims (a tuple: built at every finished send)."""

    free: int
    """Sending slots not in use."""
    inflight: int
    work_arrived: bool
    """A wake-up (new deliveries committed, claims released, re-queued) since the last claim."""
    idle_poll: bool
    """A poll interval passed with nothing waking the worker (retries may have come due)."""
    drained: bool
    """The last claim took every due row it could see: fewer rows than it asked for, none
    left behind for a full partner or endpoint."""
    finished_since_claim: int
    claim_at_least: int
    """While sends are in flight, claim once this many finished (a claim costs about as
    much for one row as for dozens)."""


def claim_now(state: ClaimState) -> bool:
    """Claim when there is room and something may be due that the last claim did not take:
    new work, a poll interval, or (the queue not drained) nothing in flight or a batch of
    finished sends. A drained queue stays drained until a wake-up or the poll: a finished
    send alone frees a slot, it makes no row due, so a low rate costs one claim per
    delivery, not two (the second finding nothing)."""
    if state.free <= 0:
        return False
    if state.work_arrived or state.idle_poll:
        return True
    if state.drained:
        return False
    return state.inflight == 0 or state.finished_since_claim >= state.claim_at_least
