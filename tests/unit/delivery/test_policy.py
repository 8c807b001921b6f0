"""delivery/policy.py without I/O: each answer, each retry step, each endpoint transition a row."""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from superimap.delivery import policy
from superimap.delivery.policy import Endpoint, State, Verdict

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
CONFIG = policy.Config()  # the defaults: 10 s, 1 min, 6 min, 36 min, 3.6 h, 21.6 h
SCHEDULE = CONFIG.schedule
WINDOW = CONFIG.free_429_window


@dataclass(frozen=True)
class Reply:
    """An answer as delivery/http.py's PostResult carries it."""

    status_code: int | None
    error: str = ""
    retry_after: float | None = None


class NoJitter(random.Random):
    """The schedule's delays exactly (the ±20 % jitter has its own test)."""

    def uniform(self, a: float, b: float) -> float:
        return 1.0


# --- classify: one row per answer ------------------------------------------------------------

CLASSIFY_ROWS = [
    # status, has_url, age, verdict
    (None, False, timedelta(0), Verdict.SKIPPED),
    (200, False, timedelta(0), Verdict.SKIPPED),
    (200, True, timedelta(0), Verdict.DELIVERED),
    (201, True, timedelta(0), Verdict.DELIVERED),
    (204, True, timedelta(0), Verdict.DELIVERED),
    (206, True, timedelta(0), Verdict.DELIVERED),
    (207, True, timedelta(0), Verdict.FAILED),
    (226, True, timedelta(0), Verdict.FAILED),
    (100, True, timedelta(0), Verdict.FAILED),
    (301, True, timedelta(0), Verdict.FAILED),
    (302, True, timedelta(0), Verdict.FAILED),
    (400, True, timedelta(0), Verdict.FAILED),
    (401, True, timedelta(0), Verdict.FAILED),
    (403, True, timedelta(0), Verdict.REFUSED),
    (403, True, WINDOW * 2, Verdict.REFUSED),
    (404, True, timedelta(0), Verdict.FAILED),
    (410, True, timedelta(0), Verdict.GONE),
    (429, True, timedelta(0), Verdict.RATE_LIMITED),
    (429, True, WINDOW - timedelta(seconds=1), Verdict.RATE_LIMITED),
    (429, True, WINDOW, Verdict.RATE_LIMITED_LONG),
    (429, True, WINDOW * 3, Verdict.RATE_LIMITED_LONG),
    (500, True, timedelta(0), Verdict.FAILED),
    (502, True, timedelta(0), Verdict.FAILED),
    (503, True, timedelta(0), Verdict.FAILED),
    (None, True, timedelta(0), Verdict.FAILED),  # timeout, connection error, refused target
]


@pytest.mark.parametrize(("status", "has_url", "age", "verdict"), CLASSIFY_ROWS)
def test_it_classifies_each_answer(status, has_url, age, verdict):
    assert policy.classify(status, has_url=has_url, age=age, config=CONFIG) is verdict


@pytest.mark.parametrize(
    ("schedule", "window"),
    [
        ((10,), timedelta(days=1)),  # at least a day
        (SCHEDULE, timedelta(seconds=2 * sum(SCHEDULE))),  # twice the default's ~26 h
        ((86400, 86400), timedelta(days=4)),
    ],
)
def test_the_free_429_window_is_twice_the_schedule_at_least_a_day(schedule, window):
    assert policy.Config(schedule=schedule).free_429_window == window


@pytest.mark.parametrize(
    ("status", "succeeded"),
    [(None, False), (199, False), (200, True), (206, True), (207, False), (403, False)],
)
def test_success_is_200_to_206(status, succeeded):
    assert policy.succeeded(status) is succeeded


def test_every_verdict_has_one_rule_and_a_row_in_the_documented_table():
    assert set(policy.RULES) == set(Verdict)
    for verdict in Verdict:
        assert f"| {verdict.name} " in policy.__doc__


# --- the delivery's next step ------------------------------------------------------------------

NO_URL = "partner has no new_mail webhook URL"
E403 = "receiver answered 403 Forbidden: user archived"
E410 = "receiver answered 410 Gone: new_mail webhook URL disabled"


def step(status, error, seconds=None, **flags):
    delay = None if seconds is None else timedelta(seconds=seconds)
    return policy.DeliveryStep(status, error, delay, **flags)


def retry(seconds, error="HTTP 500"):
    """A real failure: pending for `seconds`, one step used."""
    return step("pending", error, seconds, uses_step=True)


def give_up(error="HTTP 500"):
    return step("failed", error, uses_step=True)


def free(seconds):
    """A 429 in its free window: pending for `seconds`, no step and no attempt used."""
    return step("pending", "HTTP 429", seconds, grants_attempt=True)


def ra(status, seconds):
    return Reply(status, retry_after=seconds)


def row(name, verdict, reply, attempt, failures, expected, most=7):
    """Attempt number `attempt` of `most` in the round, after `failures` real failures."""
    return pytest.param(verdict, reply, attempt, most, failures, expected, id=name)


V = Verdict
TIMEOUT = "timeout after 30 s"
DELIVERY_ROWS = [
    row("no url", V.SKIPPED, Reply(None, "no webhook URL"), 1, 0, step("skipped", NO_URL)),
    row("2xx", V.DELIVERED, Reply(200), 1, 0, step("delivered", "")),
    row("403", V.REFUSED, Reply(403), 1, 0, step("cancelled", E403, archive_user=True)),
    row("403 last", V.REFUSED, Reply(403), 7, 6, step("cancelled", E403, archive_user=True)),
    row("410", V.GONE, Reply(410), 1, 0, step("cancelled", E410)),
    row("410 last", V.GONE, Reply(410), 7, 6, step("cancelled", E410)),
    # 429 in its free window: Retry-After (capped) or the next failure's step, nothing used
    row("429 ra", V.RATE_LIMITED, ra(429, 120), 1, 0, free(120)),
    row("429 ra capped", V.RATE_LIMITED, ra(429, 86400), 1, 0, free(3600)),
    row("429 ra past", V.RATE_LIMITED, ra(429, 0), 1, 0, free(0)),
    row("429 next step", V.RATE_LIMITED, Reply(429), 3, 2, free(360)),
    row("429 last attempt", V.RATE_LIMITED, Reply(429), 7, 6, free(77760)),
    # real failures: one step each, `failed` when the round is spent
    row("500 first", V.FAILED, Reply(500), 1, 0, retry(10)),
    row("500 second", V.FAILED, Reply(500), 2, 1, retry(60)),
    row("500 sixth", V.FAILED, Reply(500), 6, 5, retry(77760)),
    row("500 past the schedule", V.FAILED, Reply(500), 9, 8, retry(77760), most=20),
    row("500 last", V.FAILED, Reply(500), 7, 6, give_up()),
    row("500 after five free 429s", V.FAILED, Reply(500), 6, 0, retry(10), most=12),
    row("timeout", V.FAILED, Reply(None, TIMEOUT), 1, 0, retry(10, TIMEOUT)),
    row("error cut", V.FAILED, Reply(None, "x" * 5000), 1, 0, retry(10, "x" * 1024)),
    # 503 + Retry-After: a failure that waits at least as asked
    row("503 ra longer", V.FAILED, ra(503, 120), 1, 0, retry(120, "HTTP 503")),
    row("503 ra shorter", V.FAILED, ra(503, 5), 2, 1, retry(60, "HTTP 503")),
    row("503 ra capped", V.FAILED, ra(503, 99999), 1, 0, retry(3600, "HTTP 503")),
    # 429 past its free window: a failure
    row("long 429 ra", V.RATE_LIMITED_LONG, ra(429, 120), 2, 1, retry(120, "HTTP 429")),
    row("long 429", V.RATE_LIMITED_LONG, Reply(429), 2, 1, retry(60, "HTTP 429")),
    row("long 429 last", V.RATE_LIMITED_LONG, Reply(429), 7, 6, give_up("HTTP 429")),
]


@pytest.mark.parametrize(
    ("verdict", "reply", "attempt", "max_attempts", "failures", "expected"), DELIVERY_ROWS
)
def test_each_verdict_moves_the_delivery(verdict, reply, attempt, max_attempts, failures, expected):
    moved = policy.delivery_step(
        verdict,
        reply,
        kind="new_mail",
        attempt=attempt,
        max_attempts=max_attempts,
        failures=failures,
        config=CONFIG,
        rng=NoJitter(),
    )
    assert moved == expected


@pytest.mark.parametrize("failure", range(1, len(SCHEDULE) + 3))
def test_each_retry_step_waits_its_schedule_entry_within_20_percent(failure):
    seconds = SCHEDULE[min(failure, len(SCHEDULE)) - 1]
    assert policy.retry_delay(failure, CONFIG, NoJitter()) == timedelta(seconds=seconds)
    rng = random.Random(failure)
    for _ in range(200):
        delay = policy.retry_delay(failure, CONFIG, rng).total_seconds()
        assert 0.8 * seconds <= delay <= 1.2 * seconds


ROUNDS = [
    # answers in order (a 429 with Retry-After: 5 s), the waits after each (None: final)
    ([500] * 7, [10, 60, 360, 2160, 12960, 77760, None], "failed"),
    ([500, 500, 200], [10, 60, None], "delivered"),
    # issue 16: five 429s use no step; the 500 after them waits 10 s, the next one 1 min
    (["429+"] * 5 + [500, 500], [5] * 5 + [10, 60], "pending"),
    # without Retry-After a 429 waits as long as the next failure would, using nothing
    ([500, 429, 429, 500], [10, 60, 60, 60], "pending"),
    # 429s do not use up attempts: nine answers still leave the round open
    (["429+"] * 8 + [500], [5] * 8 + [10], "pending"),
    ([500, 403], [10, None], "cancelled"),
    ([500, 410], [10, None], "cancelled"),
]


@pytest.mark.parametrize(("answers", "waits", "final"), ROUNDS)
def test_a_round_of_answers(answers, waits, final):
    max_attempts = policy.attempts_per_round(SCHEDULE)
    failures = 0
    seen = []
    for attempt, answer in enumerate(answers, start=1):
        reply = Reply(429, retry_after=5) if answer == "429+" else Reply(answer)
        verdict = policy.classify(
            reply.status_code, has_url=True, age=timedelta(minutes=1), config=CONFIG
        )
        moved = policy.delivery_step(
            verdict,
            reply,
            kind="new_mail",
            attempt=attempt,
            max_attempts=max_attempts,
            failures=failures,
            config=CONFIG,
            rng=NoJitter(),
        )
        failures += moved.uses_step
        max_attempts += moved.grants_attempt
        seen.append(None if moved.delay is None else moved.delay.total_seconds())
    assert seen == waits
    assert moved.status == final


def test_a_round_has_the_first_send_and_one_retry_per_step():
    assert policy.attempts_per_round(SCHEDULE) == 7
    assert policy.attempts_per_round([10]) == 2


def test_the_config_comes_from_the_settings():
    settings = SimpleNamespace(
        WEBHOOK_RETRY_SCHEDULE=[1, 2],
        WEBHOOK_RETRY_AFTER_MAX=60,
        WEBHOOK_FAILING_AFTER=3,
        WEBHOOK_AUTO_REPLAY_HOURS=0,
    )
    assert policy.Config.from_settings(settings) == policy.Config((1, 2), 60, 3, 0)


# --- the endpoint ------------------------------------------------------------------------------

HEALTHY, FAILING, DISABLED = State.HEALTHY, State.FAILING, State.DISABLED


def moves(name, before, verdict, reply, after, *flags, **values):
    """`flags`: the EndpointStep fields that are True; `values`: the others that are set."""
    expected = policy.EndpointStep(after, **dict.fromkeys(flags, True), **values)
    return pytest.param(before, verdict, reply, expected, id=name)


def at(seconds):
    return NOW + timedelta(seconds=seconds)


E, H, F, D = Endpoint, HEALTHY, FAILING, DISABLED
OK, R403, R410, R500 = Reply(200), Reply(403), Reply(410), Reply(500)
REPLAY = (NOW - timedelta(hours=72), NOW)
GONE = policy.GONE_ERROR
ENDPOINT_ROWS = [
    # successes (a 403 too): the count back to 0, a failing endpoint recovers
    moves("success", E(H, 0), V.DELIVERED, OK, E(H, 0), "succeeded"),
    moves("reset", E(H, 3), V.DELIVERED, OK, E(H, 0), "succeeded"),
    moves("403 works", E(H, 3), V.REFUSED, R403, E(H, 0), "succeeded"),
    moves("recovery", E(F, 7), V.DELIVERED, OK, E(H, 0), "succeeded", "recovered", replay=REPLAY),
    moves(
        "403 recovers", E(F, 7), V.REFUSED, R403, E(H, 0), "succeeded", "recovered", replay=REPLAY
    ),
    moves("new URL works", E(D, 2), V.DELIVERED, OK, E(H, 0), "succeeded"),
    moves("pause kept", E(H, 0, at(600)), V.DELIVERED, OK, E(H, 0, at(600)), "succeeded"),
    # failures: WEBHOOK_FAILING_AFTER (5) in a row make a healthy endpoint failing
    moves("failure", E(H, 3), V.FAILED, R500, E(H, 4), failure="HTTP 500"),
    moves("timeout", E(H, 0), V.FAILED, Reply(None, TIMEOUT), E(H, 1), failure=TIMEOUT),
    moves("fifth", E(H, 4), V.FAILED, R500, E(F, 5), "became_failing", failure="HTTP 500"),
    moves("failing on", E(F, 5), V.FAILED, R500, E(F, 6), failure="HTTP 500"),
    moves("disabled on", E(D, 0), V.FAILED, R500, E(D, 1), failure="HTTP 500"),
    moves("503 no pause", E(H, 0), V.FAILED, ra(503, 120), E(H, 1), failure="HTTP 503"),
    # 410: disabled once
    moves("410", E(H, 2), V.GONE, R410, E(D, 2), "disabled", failure=GONE),
    moves("410 failing", E(F, 9), V.GONE, R410, E(D, 9), "disabled", failure=GONE),
    moves("410 once", E(D, 0), V.GONE, R410, E(D, 0)),
    # 429: a pause (Retry-After capped, else the first step) that only grows
    moves("429", E(H, 2), V.RATE_LIMITED, ra(429, 120), E(H, 2, at(120)), "paused"),
    moves("429 first step", E(H, 4), V.RATE_LIMITED, Reply(429), E(H, 4, at(10)), "paused"),
    moves("429 capped", E(H, 0), V.RATE_LIMITED, ra(429, 86400), E(H, 0, at(3600)), "paused"),
    moves("pause grows", E(H, 0, at(60)), V.RATE_LIMITED, ra(429, 120), E(H, 0, at(120)), "paused"),
    moves("never shrinks", E(H, 0, at(600)), V.RATE_LIMITED, ra(429, 120), E(H, 0, at(600))),
    # 429 past its free window: a pause and a failure
    moves(
        "long 429",
        E(H, 0),
        V.RATE_LIMITED_LONG,
        ra(429, 120),
        E(H, 1, at(120)),
        "paused",
        failure="HTTP 429",
    ),
    moves(
        "long 429s fail",
        E(H, 4),
        V.RATE_LIMITED_LONG,
        Reply(429),
        E(F, 5, at(10)),
        "paused",
        "became_failing",
        failure="HTTP 429",
    ),
    moves("no URL", E(F, 6), V.SKIPPED, Reply(None), E(F, 6)),
]


@pytest.mark.parametrize(("before", "verdict", "reply", "expected"), ENDPOINT_ROWS)
def test_each_verdict_moves_the_endpoint(before, verdict, reply, expected):
    assert policy.endpoint_step(before, verdict, reply, NOW, CONFIG, NoJitter()) == expected


def test_a_recovery_without_auto_replay_opens_no_window():
    config = policy.Config(auto_replay_hours=0)
    step = policy.endpoint_step(Endpoint(FAILING, 5), Verdict.DELIVERED, Reply(200), NOW, config)
    assert step.recovered and step.replay is None


@pytest.mark.parametrize(("failing_after", "failures_to_fail"), [(1, 1), (5, 5), (1000, 1000)])
def test_failing_comes_after_that_many_failures_in_a_row(failing_after, failures_to_fail):
    config = policy.Config(failing_after=failing_after)
    endpoint, count = Endpoint(), 0
    while endpoint.state is HEALTHY:
        step = policy.endpoint_step(endpoint, Verdict.FAILED, Reply(500), NOW, config)
        endpoint, count = step.after, count + 1
    assert count == failures_to_fail


WRITE_ROWS = [
    # verdicts of one batch, the endpoint's row (None: no row yet), nothing to write
    ([Verdict.DELIVERED], None, True),
    ([Verdict.DELIVERED, Verdict.REFUSED], Endpoint(HEALTHY, 0), True),
    ([Verdict.DELIVERED], Endpoint(HEALTHY, 0, at(600)), True),
    ([Verdict.DELIVERED], Endpoint(HEALTHY, 1), False),
    ([Verdict.DELIVERED], Endpoint(FAILING, 5), False),
    ([Verdict.DELIVERED], Endpoint(DISABLED, 0), False),
    ([Verdict.DELIVERED, Verdict.FAILED], None, False),
    ([Verdict.RATE_LIMITED], Endpoint(HEALTHY, 0), False),
    ([Verdict.RATE_LIMITED_LONG], Endpoint(HEALTHY, 0), False),
    ([Verdict.GONE], None, False),
]


@pytest.mark.parametrize(("verdicts", "endpoint", "nothing"), WRITE_ROWS)
def test_successes_to_a_healthy_endpoint_write_nothing(verdicts, endpoint, nothing):
    assert policy.writes_nothing(verdicts, endpoint) is nothing


def test_the_policy_imports_no_django_asyncio_or_database():
    tree = ast.parse(Path(policy.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported <= {
        "__future__",
        "collections",
        "dataclasses",
        "datetime",
        "enum",
        "random",
        "typing",
    }
