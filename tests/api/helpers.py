"""Assertions shared by the API tests."""

from __future__ import annotations


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The response is our JSON error shape with this status (and code, if given)."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    error = response.json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    if code is not None:
        assert error["code"] == code, error
    return error
