import pytest

from superimap.mailboxes.models import MailboxUser
from tests.helpers.api import assert_error

ALICE = {"tag": "alice", "email": "alice@example.com", "password": "alice-pw-secret"}


@pytest.fixture
def alice(api, plain_connection) -> MailboxUser:
    assert api.post("/connections/PLAIN/users", ALICE).status_code == 201
    return MailboxUser.objects.get(tag="alice")


@pytest.fixture
def gmail(api):
    body = {
        "imap_provider_code": "GMAIL_OAUTH2",
        "oauth_client_id": "i",
        "oauth_client_secret": "s",
    }
    assert api.post("/connections", body).status_code == 201


def test_it_creates_a_user_with_a_password(api, plain_connection):
    r = api.post("/connections/PLAIN/users", ALICE)
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["tag"] == "alice"
    assert body["connected_at"] is not None
    assert body["status"] == "new"
    assert MailboxUser.objects.get(tag="alice").password == "alice-pw-secret"


def test_it_never_returns_the_password(api, alice):
    responses = [
        api.get("/connections/PLAIN/users"),
        api.get("/connections/PLAIN/users/alice"),
        api.put("/connections/PLAIN/users/alice", {"password": "alice-pw-secret"}),
    ]
    for r in responses:
        assert r.status_code == 200
        assert b"alice-pw-secret" not in r.content
        assert b"password" not in r.content


def test_it_creates_a_user_without_credentials_as_not_connected(api, plain_connection):
    r = api.post("/connections/PLAIN/users", {"tag": "bob"})
    assert r.status_code == 201
    assert r.json()["connected_at"] is None


def test_it_requires_a_login_name_with_a_password(api, plain_connection):
    r = api.post("/connections/PLAIN/users", {"tag": "bob", "password": "pw"})
    assert_error(r, 422, "missing_field")
    assert not MailboxUser.objects.exists()


def test_it_refuses_a_password_for_an_oauth_provider(api, gmail):
    r = api.post("/connections/GMAIL_OAUTH2/users", {"tag": "bob", "password": "pw"})
    assert_error(r, 422, "invalid_field")


def test_it_requires_a_tag(api, plain_connection):
    assert_error(api.post("/connections/PLAIN/users", {"email": "a@example.com"}), 422)


def test_it_refuses_a_tag_with_a_slash(api, plain_connection):
    assert_error(api.post("/connections/PLAIN/users", {"tag": "a/b"}), 422, "validation_error")


def test_it_refuses_a_duplicate_active_tag(api, alice):
    assert_error(api.post("/connections/PLAIN/users", {"tag": "alice"}), 409, "duplicate")
    assert MailboxUser.objects.filter(tag="alice").count() == 1


def test_it_reuses_a_tag_after_archive(api, alice):
    assert api.delete("/connections/PLAIN/users/alice").status_code == 204
    r = api.post("/connections/PLAIN/users", {"tag": "alice"})
    assert r.status_code == 201
    assert MailboxUser.objects.filter(tag="alice").count() == 2
    assert api.get("/connections/PLAIN/users/alice").json()["archived"] is False


def test_it_creates_a_user_in_an_unknown_connection_as_404(api, partner):
    assert_error(api.post("/connections/PLAIN/users", {"tag": "x"}), 404)


def test_it_gets_a_user_with_signed_links(api, alice):
    body = api.get("/connections/PLAIN/users/alice").json()
    assert body["email"] == "alice@example.com"
    assert "/connect/" in body["connect_url"]
    assert "/disconnect/" in body["disconnect_url"]


def test_it_answers_404_for_an_unknown_tag(api, plain_connection):
    assert_error(api.get("/connections/PLAIN/users/nobody"), 404, "not_found")


def test_it_lists_active_users_only_by_default(api, alice):
    api.post("/connections/PLAIN/users", {"tag": "bob"})
    api.delete("/connections/PLAIN/users/bob")
    assert [u["tag"] for u in api.get("/connections/PLAIN/users").json()] == ["alice"]
    archived = api.get("/connections/PLAIN/users", archived="true").json()
    assert [u["tag"] for u in archived] == ["bob"]


def test_it_lists_users_without_n_plus_1(api, plain_connection, django_assert_max_num_queries):
    for n in range(5):
        MailboxUser.objects.create(connection=plain_connection, tag=f"u{n}")
    with django_assert_max_num_queries(4):
        r = api.get("/connections/PLAIN/users")
    assert len(r.json()) == 5


def test_it_updates_a_user(api, alice):
    r = api.put(
        "/connections/PLAIN/users/alice", {"enable_tracer": True, "email": "a2@example.com"}
    )
    assert r.status_code == 200, r.content
    alice.refresh_from_db()
    assert alice.enable_tracer is True
    assert alice.email == "a2@example.com"


def test_it_resets_the_back_off_on_new_password(api, alice):
    MailboxUser.objects.filter(id=alice.id).update(
        status="auth_failed", last_error="bad", consecutive_failures=4
    )
    api.put("/connections/PLAIN/users/alice", {"password": "new-pw"})
    alice.refresh_from_db()
    assert (alice.status, alice.last_error, alice.consecutive_failures) == ("new", "", 0)
    assert alice.password == "new-pw"


def test_it_archives_a_user_on_delete(api, alice):
    assert api.delete("/connections/PLAIN/users/alice").status_code == 204
    alice.refresh_from_db()
    assert alice.archived is True and alice.archived_at is not None
    assert api.get("/connections/PLAIN/users/alice").json()["archived"] is True


def test_it_answers_an_archived_user_s_delete_as_put_does_and_changes_nothing(api, alice):
    assert api.delete("/connections/PLAIN/users/alice").status_code == 204
    alice.refresh_from_db()
    archived_at = alice.archived_at
    assert api.put("/connections/PLAIN/users/alice", {"archived": True}).status_code == 200
    assert api.delete("/connections/PLAIN/users/alice").status_code == 204
    alice.refresh_from_db()
    assert alice.archived is True and alice.archived_at == archived_at
    assert_error(api.delete("/connections/PLAIN/users/nobody"), 404, "not_found")


def test_it_restores_an_archived_user_on_put_with_archived_false(api, alice):
    api.delete("/connections/PLAIN/users/alice")
    r = api.put("/connections/PLAIN/users/alice", {"archived": False})
    assert r.status_code == 200
    assert r.json()["archived"] is False
    alice.refresh_from_db()
    assert alice.archived is False and alice.archived_at is None


def test_it_keeps_an_archived_user_archived_on_a_put_without_archived(api, alice):
    api.delete("/connections/PLAIN/users/alice")
    r = api.put("/connections/PLAIN/users/alice", {"email": "new@example.com"})
    assert r.status_code == 200
    assert r.json()["archived"] is True
    alice.refresh_from_db()
    assert alice.archived is True and alice.email == "new@example.com"


def test_it_archives_a_user_on_put_with_archived_true(api, alice):
    r = api.put("/connections/PLAIN/users/alice", {"archived": True})
    assert r.status_code == 200
    assert r.json()["archived"] is True
    alice.refresh_from_db()
    assert alice.archived is True and alice.archived_at is not None


# Tenant isolation.


def test_it_hides_users_from_another_partner(outsider_api, alice):
    assert_error(outsider_api.get("/connections/PLAIN/users"), 404)
    assert_error(outsider_api.get("/connections/PLAIN/users/alice"), 404)


def test_it_stops_another_partner_creating_users(outsider_api, plain_connection):
    assert_error(outsider_api.post("/connections/PLAIN/users", {"tag": "intruder"}), 404)
    assert not plain_connection.users.exists()


def test_it_stops_another_partner_updating_a_user(outsider_api, alice):
    r = outsider_api.put("/connections/PLAIN/users/alice", {"email": "evil@example.com"})
    assert_error(r, 404)
    alice.refresh_from_db()
    assert alice.email == "alice@example.com"


def test_it_stops_another_partner_archiving_a_user(outsider_api, alice):
    assert_error(outsider_api.delete("/connections/PLAIN/users/alice"), 404)
    alice.refresh_from_db()
    assert alice.archived is False


def test_it_keeps_users_apart_when_both_partners_use_the_same_tag(
    api, outsider_api, alice, outsider
):
    outsider_api.post("/connections", {"imap_provider_code": "PLAIN", "imap_host": "o.example"})
    r = outsider_api.post("/connections/PLAIN/users", {"tag": "alice"})
    assert r.status_code == 201
    outsider_api.delete("/connections/PLAIN/users/alice")
    assert api.get("/connections/PLAIN/users/alice").json()["archived"] is False


def test_it_creates_a_tracer_user(api, plain_connection):
    r = api.post("/connections/PLAIN/users", {"tag": "tracer", "enable_tracer": True})
    assert r.status_code == 201, r.content
    assert r.json()["enable_tracer"] is True


# Inbox sweep.


def test_it_requests_a_sweep(api, alice):
    r = api.post("/connections/PLAIN/users/alice/sweep", {})
    assert r.status_code == 202, r.content
    assert r.json()["tag"] == "alice"
    assert r.json()["sweep_requested_at"] is not None
    alice.refresh_from_db()
    assert alice.backfill_requested_at is not None and alice.backfill_since is None
    assert r.json()["backfill"]["state"] == "pending"


def test_it_refuses_to_sweep_an_archived_user(api, alice):
    api.delete("/connections/PLAIN/users/alice")
    assert_error(api.post("/connections/PLAIN/users/alice/sweep", {}), 409, "archived")
    alice.refresh_from_db()
    assert alice.backfill_requested_at is None


def test_it_refuses_to_sweep_a_user_that_is_not_connected(api, plain_connection):
    api.post("/connections/PLAIN/users", {"tag": "bob"})
    assert_error(api.post("/connections/PLAIN/users/bob/sweep", {}), 409, "not_connected")
    assert MailboxUser.objects.get(tag="bob").backfill_requested_at is None


def test_it_answers_404_when_sweeping_an_unknown_user(api, plain_connection):
    assert_error(api.post("/connections/PLAIN/users/nobody/sweep", {}), 404)


def test_it_stops_another_partner_sweeping_a_user(outsider_api, alice):
    assert_error(outsider_api.post("/connections/PLAIN/users/alice/sweep", {}), 404)
    alice.refresh_from_db()
    assert alice.backfill_requested_at is None


@pytest.mark.parametrize(
    "tag",
    [
        "alice\u202ecod.exe",  # right-to-left override
        "ali\u200bce",  # zero-width space
        "al\u2066ice",  # left-to-right isolate
        "\ufeffalice",  # byte-order mark / zero-width no-break space
        "ali\x07ce",  # bell
        "ali\x7fce",  # delete
        "alice\u2028",  # line separator
    ],
)
def test_it_refuses_invisible_and_control_characters_in_tags(api, plain_connection, tag):
    r = api.post("/connections/PLAIN/users", {"tag": tag})
    assert_error(r, 422, "validation_error")
    assert not plain_connection.users.exists()


@pytest.mark.parametrize(
    "tag",
    [
        "alice\u3164",  # Hangul filler: a letter (Lo) that renders as nothing
        "\u115falice",  # Hangul choseong filler
        "ali\uffa0ce",  # halfwidth Hangul filler
        "ali\u034fce",  # combining grapheme joiner (Mn)
        "alice\ufe0f",  # variation selector (Mn)
        "ali\u17b4ce",  # Khmer inherent vowel (Mn)
        "alice\U000e0100",  # variation selector supplement (Mn)
    ],
)
def test_it_refuses_default_ignorable_code_points_in_tags(api, plain_connection, tag):
    r = api.post("/connections/PLAIN/users", {"tag": tag})
    error = assert_error(r, 422, "validation_error")
    assert "invisible" in error["details"][0]["msg"]
    assert not plain_connection.users.exists()


def test_it_accepts_a_non_ascii_visible_tag(api, plain_connection):
    r = api.post("/connections/PLAIN/users", {"tag": "zoë-日本"})
    assert r.status_code == 201, r.content


def _restore_after_the_first_lookup(user_id: int):
    """A query hook: right after the first SELECT of a user by tag, another request's
    restore of that user commits (as it can between two statements of this one)."""
    from django.db import connection

    state = {"done": False}

    def hook(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not state["done"] and sql.lstrip().upper().startswith("SELECT"):
            if "mailboxes_mailboxuser" in sql and '"tag" =' in sql:
                state["done"] = True
                MailboxUser.objects.filter(id=user_id).update(archived=False, archived_at=None)
        return result

    return connection.execute_wrapper(hook), state


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("get", None),
        ("put", {"archived": False}),  # a restore racing another restore: no conflict
        ("put", {}),  # leaves archived as it is: as the concurrent restore left it
        ("put", {"email": "alice@example.com"}),
    ],
)
def test_a_concurrent_restore_never_answers_404_for_an_existing_user(
    api, plain_connection, method, body
):
    user = MailboxUser.objects.create(connection=plain_connection, tag="alice")
    user.archive()
    hook, state = _restore_after_the_first_lookup(user.id)
    with hook:
        r = getattr(api, method)(
            "/connections/PLAIN/users/alice", **({"body": body} if method == "put" else {})
        )
    assert state["done"]
    assert r.status_code == 200, r.content
    assert r.json()["tag"] == "alice"
    assert MailboxUser.objects.filter(tag="alice", archived=False).count() == 1


@pytest.mark.parametrize("email", ["not an email", "alice@", "@example.com", "a b@example.com"])
def test_it_refuses_an_email_that_is_not_an_address_with_a_clear_422(api, plain_connection, email):
    r = api.post("/connections/PLAIN/users", {"tag": "alice", "email": email})
    error = assert_error(r, 422, "validation_error")
    assert error["details"][0]["loc"] == ["body", "email"]
    assert "not an email address" in error["details"][0]["msg"]
    r = api.post("/connections/PLAIN/users", {"tag": "alice", "email": "alice@example.com"})
    assert r.status_code == 201
    r = api.put("/connections/PLAIN/users/alice", {"email": email})
    assert assert_error(r, 422)["details"][0]["loc"] == ["body", "email"]
    assert api.get("/connections/PLAIN/users/alice").json()["email"] == "alice@example.com"
