"""oauth: what the token endpoint says about a token's lifetime is read defensively."""

from __future__ import annotations

from agent.oauth import _lifetime


def test_token_lifetime_from_number_string_or_garbage() -> None:
    """expires_in as a number or numeric string is used; anything else means an hour, never
    an exception that would escape the delivery error mapping."""
    assert _lifetime(120) == 120.0
    assert _lifetime("3599") == 3599.0
    assert _lifetime("soon") == 3600.0
    assert _lifetime(None) == 3600.0
    assert _lifetime([1]) == 3600.0
