"""PostgreSQL prepares the group commit's and the claim's statements once per connection
(platform/statements.py): Django binds on the client and prepares nothing by default, so
the server parsed each of them at every group and claim."""

from __future__ import annotations

import json

from tests.helpers.processes import run_cli, superimap_env


def test_it_prepares_the_group_commit_and_the_claim(postgres_url, tmp_path):
    env = superimap_env(postgres_url, tmp_path / "var")
    run_cli(env, "migrate")
    code = (
        "import json; from tests.helpers.prepared import prepared_statements; "
        "print('RESULT ' + json.dumps(prepared_statements()))"
    )
    out = run_cli(env, "manage", "shell", "-c", code)
    result = json.loads(out.split("RESULT ", 1)[1])
    statements = result["statements"]
    assert result["maillog_rows"] == 14 and result["claimed"] == 7, result

    def prepared(start: str) -> bool:
        return any(statement.startswith(start) for statement in statements)

    assert prepared("SELECT u.id, u.tag, u.enable_tracer"), statements  # the fence
    assert prepared("SELECT m.user_id, m.folder, m.uid_validity, m.uid"), statements
    assert prepared("SELECT m.user_id, m.sha1, m.identity"), statements  # dedup
    assert prepared("INSERT INTO mailboxes_maillog"), statements
    assert prepared("INSERT INTO delivery_delivery"), statements
    assert prepared("UPDATE mailboxes_mailboxuser AS u"), statements  # the checkpoints
    assert prepared("SELECT id, event_id, kind, attempts"), statements  # the claim's due rows
    assert prepared("UPDATE delivery_delivery SET attempts = attempts + 1"), statements
    # One text per statement whatever the number of rows: nothing prepared twice.
    assert len(statements) == len(set(statements)), statements
    # Planned at each run with its values (settings.py: plan_cache_mode), never with a
    # generic plan made while a table was nearly empty.
    assert result["plan_cache_mode"] == "force_custom_plan", result
    assert result["generic"] == [], result["generic"]
