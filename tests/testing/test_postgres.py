"""The private PostgreSQL fixture starts, serves connections and cleans up."""

from __future__ import annotations

import psycopg

from devtools.testing.postgres import PostgresServer


def test_it_serves_the_superimap_database() -> None:
    with PostgresServer() as server:
        assert server.url == f"postgresql://postgres@127.0.0.1:{server.port}/superimap"
        with psycopg.connect(server.url, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.execute("SELECT current_database()").fetchone() == ("superimap",)
            assert conn.execute("SHOW fsync").fetchone() == ("off",)


def test_stop_removes_the_cluster() -> None:
    server = PostgresServer()
    server.start()
    root = server.root
    assert root is not None and (root / "data" / "PG_VERSION").exists()
    server.stop()
    assert not root.exists()
    try:
        psycopg.connect(server.url, connect_timeout=2).close()
    except psycopg.OperationalError:
        pass
    else:
        raise AssertionError("the server still accepts connections after stop()")
