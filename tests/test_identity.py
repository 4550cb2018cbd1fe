"""Peer ids, resume tokens and the secret behind them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from chatsubo.server.identity import SECRET_ENV, TokenSigner, load_secret, new_peer_id


def test_peer_ids_are_long_and_distinct() -> None:
    ids = {new_peer_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 22 and "." not in i for i in ids)


def test_token_round_trip() -> None:
    signer = TokenSigner(b"k")
    assert signer.verify(signer.issue("abc")) == "abc"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace(t.split(".")[0], "someone-else"),
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
        lambda t: t.split(".", 1)[0],
        lambda t: "",
        lambda t: "a.b.c",
        lambda t: t + ".extra",
    ],
)
def test_forged_tokens_fail(mangle: object) -> None:
    signer = TokenSigner(b"k")
    assert callable(mangle)
    assert signer.verify(mangle(signer.issue("abc"))) is None


def test_token_from_another_secret_fails() -> None:
    assert TokenSigner(b"other").verify(TokenSigner(b"k").issue("abc")) is None


def test_tokens_expire() -> None:
    signer = TokenSigner(b"k", max_age=60)
    token = signer.issue("abc", now=1000)
    assert signer.verify(token, now=1059) == "abc"
    assert signer.verify(token, now=1061) is None


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
