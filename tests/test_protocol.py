"""The protocol module, and the documentation that describes it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest

from chatsubo import channels
from chatsubo import protocol as p

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def _examples(section: str) -> list[str]:
    text = DOC.read_text()
    signaling, peer_to_peer = text.split("## Peer to peer")
    client, server = signaling.split("## Server to client")
    part = {
        "client": client.split("## Client to server")[1],
        "server": server,
        "peer": peer_to_peer,
    }[section]
    return re.findall(r"```json\n(.*?)\n```", part, flags=re.S)


@pytest.mark.parametrize("example", _examples("client"))
def test_documented_client_messages_decode(example: str) -> None:
    message = p.decode_client(example)
    assert json.loads(p.encode(message)) == json.loads(example)


@pytest.mark.parametrize("example", _examples("server"))
def test_documented_server_messages_decode(example: str) -> None:
    message = p.decode_server(example)
    assert json.loads(p.encode(message)) == json.loads(example)


def test_every_message_type_is_documented() -> None:
    documented = {
        json.loads(e)["type"] for section in ("client", "server") for e in _examples(section)
    }
    tags = {
        t.__struct_config__.tag
        for union in (p.ClientMessage, p.ServerMessage)
        for t in union.__args__
    }
    assert documented == tags


def test_the_documented_client_rules_are_the_served_ones() -> None:
    (example,) = re.findall(r"```json /api/protocol\n(.*?)\n```", DOC.read_text(), flags=re.S)
    assert json.loads(example) == json.loads(p.rules_json())


def test_every_error_code_is_documented() -> None:
    text = DOC.read_text()
    for code in p.ErrorCode:
        assert f"| `{code.value}` |" in text


def test_signal_data_is_relayed_verbatim() -> None:
    raw = '{"type":"signal","to":"x","data":{"sdp":"v=0\\r\\n","n":[1,2.5,null]}}'
    message = p.decode_client(raw)
    assert isinstance(message, p.Signal)
    relayed = p.encode(p.RelayedSignal(from_="y", data=message.data))
    assert relayed == b'{"type":"signal","from":"y","data":{"sdp":"v=0\\r\\n","n":[1,2.5,null]}}'


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ("not json", "malformed"),
        ("[1]", "Expected `object`"),
        ('{"type": "dance"}', "Invalid value 'dance'"),
        ('{"roomId": "r"}', "missing required field `type`"),
        ('{"type": "join", "roomId": "r"}', "missing required field `name`"),
        ('{"type": "join", "roomId": 5, "name": "x"}', "Expected `str`"),
        ('{"type": "join", "roomId": "a b", "name": "x"}', "$.roomId"),
        ('{"type": "join", "roomId": "r", "name": "tab\\there"}', "printable"),
        ('{"type": "join", "roomId": "r", "name": "   "}', "printable"),
        ('{"type": "signal", "to": "x"}', "missing required field `data`"),
        ('{"type": "ping", "t": "now"}', "Expected `float`"),
    ],
)
def test_bad_frames_name_the_problem(frame: str, fragment: str) -> None:
    with pytest.raises(p.ProtocolError) as caught:
        p.decode_client(frame)
    assert caught.value.code is p.ErrorCode.BAD_MESSAGE
    assert fragment in caught.value.message


def test_room_id_rule() -> None:
    assert p.is_valid_room_id("chatsubo-main")
    assert p.is_valid_room_id("a" * 64)
    assert not p.is_valid_room_id("a" * 65)
    assert not p.is_valid_room_id("")
    assert not p.is_valid_room_id("bar/1")


def test_update_distinguishes_absent_from_null_zone() -> None:
    absent = p.decode_client('{"type": "update", "name": "x"}')
    cleared = p.decode_client('{"type": "update", "zone": null}')
    assert isinstance(absent, p.Update)
    assert isinstance(cleared, p.Update)
    assert absent.zone is msgspec.UNSET
    assert cleared.zone is None


@pytest.mark.parametrize("example", _examples("peer"))
def test_documented_channel_messages_decode(example: str) -> None:
    decode = channels.decode_chat if '"chat"' in example else channels.decode_position
    message = decode(example)
    assert json.loads(channels.encode(message)) == json.loads(example)


def test_close_reason_fits_a_control_frame_in_whole_characters() -> None:
    assert p.close_reason("bye") == b"bye"
    reason = p.close_reason("é" * 100)
    assert len(reason) <= 123
    assert reason.decode() == "é" * 61
