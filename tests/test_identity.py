"""Peer ids, resume tokens, invites and the secret behind them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest

from chatsubo.server.identity import (
    ANY_ROOM,
    SECRET_ENV,
    Invite,
    Resume,
    TokenRejected,
    TokenSigner,
    load_secret,
    new_peer_id,
)


def test_peer_ids_are_long_and_distinct() -> None:
    ids = {new_peer_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 22 and "." not in i for i in ids)


def test_token_round_trip() -> None:
    signer = TokenSigner(b"k")
    assert signer.verify(signer.issue("abc")) == Resume("abc")
    assert signer.verify(signer.issue("abc", "bar", "Ann")) == Resume("abc", "bar", "Ann")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace(t.split(".")[0], "someone-else"),
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
        lambda t: t.split(".", 1)[0],
        lambda t: "",
        lambda t: "a.b.c",
        lambda t: t + ".extra",
        # Another peer id in the claims, with the signature left as it was.
        lambda t: ".".join([t.split(".")[0], _claims(t, sub="mallory"), t.split(".")[2]]),
    ],
)
def test_forged_tokens_fail(mangle: object) -> None:
    signer = TokenSigner(b"k")
    assert callable(mangle)
    assert signer.verify(mangle(signer.issue("abc"))) is None


def _claims(token: str, **changes: str) -> str:
    """The claims part of ``token`` with ``changes``, encoded again."""
    body = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    encoded = json.dumps({**claims, **changes}).encode()
    return base64.urlsafe_b64encode(encoded).rstrip(b"=").decode()


def test_token_from_another_secret_fails() -> None:
    assert TokenSigner(b"other").verify(TokenSigner(b"k").issue("abc")) is None


def test_tokens_expire() -> None:
    signer = TokenSigner(b"k", max_age=60)
    # Beyond the minute of leeway for clocks that differ, and within it.
    assert signer.verify(signer.issue("abc", now=time.time() - 121)) is None
    assert signer.verify(signer.issue("abc", now=time.time() - 90)) == Resume("abc")


def test_short_secrets_make_full_length_keys() -> None:
    """PyJWT warns about HMAC keys under 32 bytes; the suite turns warnings into errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        signer = TokenSigner(b"k")
        assert signer.admit(signer.invite("bar"), "bar") == Invite("bar")


def test_an_invite_opens_its_room_or_every_room() -> None:
    signer = TokenSigner(b"k")
    assert signer.admit(signer.invite("bar", name="Ann"), "bar") == Invite("bar", "Ann")
    assert signer.admit(signer.invite(ANY_ROOM), "lounge") == Invite(ANY_ROOM)
    with pytest.raises(TokenRejected, match="an invite to room bar, not lounge"):
        signer.admit(signer.invite("bar"), "lounge")
    assert signer.opens(signer.invite("bar")) == "bar"
    assert signer.opens(signer.issue("abc", "bar")) is None


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda s: s.invite("bar", ttl=60, now=time.time() - 200), "it has expired"),
        (lambda s: s.invite("bar", now=time.time() + 600), "it is not valid yet"),
        (lambda s: TokenSigner(b"other").invite("bar"), "not made by this server"),
        (lambda s: s.invite("bar")[:-3], "not made by this server"),
        (lambda s: "not a token", "not made by this server"),
        (lambda s: s.issue("abc", "bar"), "it is a resume token, not an invite"),
    ],
)
def test_invites_that_do_not_open_the_door_say_why(
    make: Callable[[TokenSigner], str], why: str
) -> None:
    signer = TokenSigner(b"k")
    with pytest.raises(TokenRejected, match=why):
        signer.admit(make(signer), "bar")


def test_an_invite_is_no_resume_token() -> None:
    signer = TokenSigner(b"k")
    assert signer.verify(signer.invite("bar")) is None


def test_claims_are_required() -> None:
    """A token signed with our key but missing ``exp`` (or ``use``) is refused."""
    key = hmac.new(b"k", b"chatsubo tokens", hashlib.sha256).digest()
    no_expiry = jwt.encode({"use": "invite", "room": "bar", "iat": 1, "nbf": 1}, key, "HS256")
    no_use = jwt.encode({"sub": "abc", "iat": 1, "nbf": 1, "exp": 2**40}, key, "HS256")
    signer = TokenSigner(b"k")
    with pytest.raises(TokenRejected):
        signer.admit(no_expiry, "bar")
    assert signer.verify(no_use) is None


def test_secret_is_generated_once_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    first = load_secret(None, tmp_path / "state")
    assert len(first) >= 32
    assert load_secret(None, tmp_path / "state") == first
    mode = (tmp_path / "state" / "secret").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_secret_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "from-env")
    assert load_secret(None, tmp_path) == b"from-env"
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("from-file\n")
    assert load_secret(secret_file, tmp_path) == b"from-file"
    secret_file.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_secret(secret_file, tmp_path)
