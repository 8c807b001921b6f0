def test_it_creates_a_plain_connection_and_user(api):
    r = api.post("/connections", {"imap_provider_code": "PLAIN", "imap_host": "imap.example.com"})
    assert r.status_code == 201, r.content
    r = api.post(
        "/connections/PLAIN/users", {"tag": "u1", "email": "a@example.com", "password": "pw"}
    )
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["connected_at"] is not None
    assert "password" not in body
    r = api.get("/connections/PLAIN/users/u1")
    assert r.status_code == 200
    assert r.json()["connect_url"].startswith("http://127.0.0.1:8000/connect/")
