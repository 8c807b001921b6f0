"""The dashboard's front page: rollups in, charts, numbers with links, banners out."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from superimap import rollupwriter
from superimap.engine.models import MinuteRollup
from superimap.mailboxes.models import MailboxUser
from superimap.overview import percentile
from superimap.platform import rollups
from superimap.platform.dbpool import DbPool


@pytest.fixture
def user(plain_connection) -> MailboxUser:
    return MailboxUser.objects.create(
        connection=plain_connection, tag="alice", connected_at=timezone.now()
    )


def test_it_computes_percentiles_from_merged_buckets():
    buckets = [0] * rollups.BUCKETS
    buckets[rollups.BOUNDS.index(0.1)] = 98  # (0.05, 0.1]
    buckets[rollups.BOUNDS.index(5.0)] = 2  # (2, 5]
    assert 0.05 < percentile(buckets, 0.5) <= 0.1
    assert 0.1 < percentile(buckets, 0.99) <= 5.0
    assert percentile([0] * rollups.BUCKETS, 0.5) is None


def test_it_upserts_one_row_per_minute_per_process_with_the_totals(db):
    recorder = rollups.Recorder()
    recorder.record_new_mails(2, [0.02, 0.3])
    rollupwriter.write("engine-a", recorder.take())
    recorder.record_new_mails(1, [0.02])
    recorder.record_outcomes(1, 1, [0.2])
    rollupwriter.write("engine-a", recorder.take())

    rows = list(MinuteRollup.objects.filter(source="engine-a"))
    if len(rows) == 2:  # the test straddled a minute: the two minutes add up the same
        assert sum(r.new_mails for r in rows) == 3
        return
    (row,) = rows
    assert (row.new_mails, row.delivered, row.failed_attempts) == (3, 1, 1)
    assert sum(row.push_to_commit) == 3
    assert row.push_to_commit[0] == 2  # 0.02 s twice, in the first bucket


def test_it_keeps_the_counts_when_a_write_fails(seeded_providers):
    class FailingPool:
        async def run(self, fn, *args):
            raise RuntimeError("database gone")

    recorder = rollups.Recorder()
    recorder.record_outcomes(4, 0, [0.1] * 4)
    try:
        asyncio.run(
            rollupwriter.flush_once(FailingPool(), "worker-b", backlog=False, recorder=recorder)
        )
    except RuntimeError:
        pass
    pool = DbPool(size=1)
    try:
        asyncio.run(rollupwriter.flush_once(pool, "worker-b", backlog=False, recorder=recorder))
    finally:
        pool.shutdown()
    assert sum(r.delivered for r in MinuteRollup.objects.filter(source="worker-b")) == 4


def test_it_purges_rollups_past_their_retention(db, settings):
    settings.ROLLUP_RETENTION_DAYS = 2
    now = timezone.now()
    MinuteRollup.objects.create(minute=now - timedelta(days=3), source="old")
    MinuteRollup.objects.create(minute=now - timedelta(hours=1), source="new")
    assert rollupwriter.purge(now) == 1
    assert list(MinuteRollup.objects.values_list("source", flat=True)) == ["new"]


def _rollup(minutes_ago: int, **values) -> None:
    minute = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=minutes_ago)
    MinuteRollup.objects.create(minute=minute, source="node-1", **values)


def test_it_draws_the_charts_from_the_rollups(admin_client):
    commit = [0] * rollups.BUCKETS
    commit[rollups.BOUNDS.index(0.25)] = 30
    for ago in range(5):
        _rollup(
            ago,
            new_mails=30,
            delivered=29,
            failed_attempts=1,
            commit_to_delivered=commit,
            backlog=ago,
        )
    html = admin_client.get("/admin/").content.decode()

    hour = html[html.index('id="superimap-window-hour"') : html.index('id="superimap-window-day"')]
    assert "150 new mails" in hour and "145 webhooks delivered" in hour
    assert "5 failed attempts" in hour
    for chart in ("throughput", "latency", "backlog"):
        assert f'id="chart-{chart}-hour"' in hour
    # One line per series with data, five points (the five minutes) each.
    throughput = re.search(r'<svg[^>]*id="chart-throughput-hour".*?</svg>', hour, re.S).group(0)
    lines = re.findall(r'data-series="([^"]+)"[^>]*points="([^"]+)"', throughput)
    assert {name for name, _ in lines} == {"new mails", "delivered", "failed attempts"}
    assert all(len(points.split()) == 5 for _, points in lines)
    # commit -> 2xx p50 from the (0.1, 0.25] bucket.
    assert re.search(r"commit → 2xx p50/p99: 0\.1\d\d / 0\.2\d\d s", hour)
    assert "status__exact=delivered&amp;delivered_at__gte=" in hour
    # The day's window averages 10-minute steps.
    assert 'id="chart-throughput-day"' in html


def test_every_overview_link_opens_its_list(admin_client, plain_connection):
    MailboxUser.objects.create(
        connection=plain_connection, tag="t", status=MailboxUser.Status.BACKING_OFF
    )
    _rollup(0, new_mails=1, delivered=1)
    html = admin_client.get("/admin/").content.decode()
    section = html[html.index('id="superimap-overview"') :]
    links = set(re.findall(r'href="(/admin/[^"]+\?[^"]+)"', section))
    assert len(links) >= 6
    for link in links:
        response = admin_client.get(link.replace("&amp;", "&"))
        assert response.status_code == 200, link
        # The admin drops a filter it does not know with ?e=1: every filter here is real.
        assert not re.search(r"(^|&)e=1", response.request["QUERY_STRING"]), link
        assert b"errornote" not in response.content, link


def test_it_shows_a_banner_for_an_imap_host_where_most_mailboxes_fail(
    admin_client, plain_connection
):
    for i in range(7):
        MailboxUser.objects.create(
            connection=plain_connection,
            tag=f"down-{i}",
            connected_at=timezone.now(),
            status=MailboxUser.Status.BACKING_OFF,
            last_error="connection refused",
        )
    html = admin_client.get("/admin/").content.decode()
    banner = re.search(r'<li class="error superimap-host-banner">(.*?)</li>', html, re.S).group(1)
    assert "imap.example.com" in banner
    assert "7 of 7 mailboxes failing" in banner
    assert "connection refused" in banner
    link = re.search(r'href="([^"]+)"', banner).group(1).replace("&amp;", "&")
    listing = admin_client.get(link).content.decode()
    assert listing.count("down-") >= 7


def test_it_names_no_host_when_most_of_its_mailboxes_are_fine(admin_client, plain_connection):
    for i in range(4):
        MailboxUser.objects.create(
            connection=plain_connection,
            tag=f"m-{i}",
            connected_at=timezone.now(),
            status=MailboxUser.Status.BACKING_OFF if i == 0 else MailboxUser.Status.IDLE,
            last_error="timeout" if i == 0 else "",
        )
    assert "superimap-host-banner" not in admin_client.get("/admin/").content.decode()


def test_it_shows_banners_for_a_dead_worker_and_a_late_backlog(admin_client, user, settings):
    from superimap.delivery.models import Delivery, WorkerNode

    now = timezone.now()
    WorkerNode.objects.create(
        worker_id="box:1234",
        host="box",
        pid=1234,
        version="t",
        started_at=now - timedelta(hours=1),
        last_seen=now - timedelta(minutes=2),
    )
    Delivery.objects.create(
        kind="new_mail",
        partner=user.connection.partner,
        user=user,
        payload={},
        status=Delivery.Status.PENDING,
        next_attempt_at=now - timedelta(seconds=settings.HEALTHZ_BACKLOG_SECONDS + 60),
    )
    html = admin_client.get("/admin/").content.decode()
    assert "Webhook worker box:1234 on box" in html
    assert "the oldest due webhook has waited" in html


def test_the_worker_measures_the_backlog_once_a_minute(seeded_providers, user):
    from superimap.delivery.models import Delivery

    class Pool(DbPool):
        calls = 0

        async def run(self, fn, *args):
            if fn is rollupwriter.measure_backlog:
                Pool.calls += 1
            return await super().run(fn, *args)

    Delivery.objects.create(
        kind="new_mail",
        partner=user.connection.partner,
        user=user,
        payload={},
        status=Delivery.Status.PENDING,
        next_attempt_at=timezone.now() - timedelta(seconds=30),
    )
    while time.time() % 60 > 55:  # not across a minute boundary
        time.sleep(0.5)
    recorder = rollups.Recorder()
    pool = Pool(size=1)
    try:
        for _ in range(3):
            asyncio.run(rollupwriter.flush_once(pool, "worker-c", backlog=True, recorder=recorder))
    finally:
        pool.shutdown()
    assert Pool.calls == 1
    row = MinuteRollup.objects.get(source="worker-c")
    assert row.backlog == 1
    assert row.backlog_oldest_seconds >= 29


def test_push_time_is_the_exists_within_the_internaldate_second_else_the_internaldate():
    from datetime import UTC, datetime

    from superimap.sync.persist import FetchedMessage

    internal = datetime(2026, 12, 6, 21, 0, 0, tzinfo=UTC)
    stamp = internal.timestamp()

    def message(seen_at):
        return FetchedMessage(uid=1, size=1, internal_date=internal, raw=b"x", seen_at=seen_at)

    assert message(stamp + 0.42).pushed_at() == stamp + 0.42  # IDLE: EXISTS in that second
    assert message(stamp + 90).pushed_at() == stamp  # caught up later: INTERNALDATE
    assert message(None).pushed_at() == stamp
    assert FetchedMessage(uid=1, size=1, internal_date=None, raw=b"x").pushed_at() is None
