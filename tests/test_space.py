"""The shared definition of the bar: map, distance model, and what the browser is served."""

from __future__ import annotations

import itertools

import aiohttp
import msgspec
import pytest

from chatsubo.peer.mesh import PeerOptions
from chatsubo.space import BAR, Space
from tests.conftest import RunningServer

MODEL = BAR.distance_model


def test_full_volume_within_conversation_distance() -> None:
    assert MODEL.gain(0.0) == 1.0
    assert MODEL.gain(MODEL.ref_distance) == 1.0


def test_gain_falls_steeply_then_reaches_exactly_zero_at_the_hearing_range() -> None:
    distances = [MODEL.ref_distance + 0.01 * i for i in range(1200)]
    gains = [MODEL.gain(d) for d in distances]
    assert all(a > b for a, b in itertools.pairwise(gains) if a > 0)
    assert MODEL.gain(4.0) < 0.5
    assert MODEL.gain(MODEL.hearing_range) == 0.0
    assert MODEL.gain(MODEL.hearing_range - 0.01) > 0.0
    assert MODEL.gain(100.0) == 0.0


def test_the_fade_has_no_step() -> None:
    """No jump where the fade begins or ends: neighbouring centimetres differ by under 1 %."""
    for edge in (MODEL.fade_from, MODEL.hearing_range):
        below, above = MODEL.gain(edge - 0.005), MODEL.gain(edge + 0.005)
        assert below - above < 0.01 * MODEL.gain(MODEL.fade_from)


def test_the_far_side_of_the_bar_is_silent() -> None:
    bar = BAR.map
    assert MODEL.hearing_range < min(bar.width, bar.height)
    west, east = bar.zone("Gaming Zone").center, bar.zone("Lounge").center
    assert MODEL.stereo_gains(west, east) == (0.0, 0.0)


def test_panning_follows_direction_with_equal_power() -> None:
    listener = (10.0, 10.0)
    left, right = MODEL.stereo_gains(listener, (9.0, 10.0))
    assert left > 0.99
    assert right < 0.01
    left, right = MODEL.stereo_gains(listener, (11.5, 10.0))
    assert right > left
    left, right = MODEL.stereo_gains(listener, (10.0, 8.5))
    assert left == pytest.approx(right)
    assert left**2 + right**2 == pytest.approx(1.0)


def test_zones_tile_the_bar() -> None:
    bar = BAR.map
    for x in range(int(bar.width)):
        for y in range(int(bar.height)):
            inside = [z.name for z in bar.zones if z.contains(x + 0.5, y + 0.5)]
            assert len(inside) == 1, (x, y, inside)
    assert bar.zone_at(*bar.zone("gaming zone").center) == bar.zone("Gaming Zone")
    with pytest.raises(KeyError, match="the zones are"):
        bar.zone("Kitchen")


def test_furniture_stands_inside_the_bar() -> None:
    bar = BAR.map
    assert bar.furniture
    for item in bar.furniture:
        assert 0 <= item.x <= item.x + item.width <= bar.width, item
        assert 0 <= item.y <= item.y + item.height <= bar.height, item


async def test_served_definition_is_the_python_one(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/api/space") as response:
        assert response.status == 200
        body = await response.read()
    assert msgspec.json.decode(body, type=Space) == BAR
    served = msgspec.json.decode(body)
    assert served["distanceModel"]["refDistance"] == MODEL.ref_distance
    assert served["distanceModel"]["hearingRange"] == MODEL.hearing_range
    assert served["map"]["zones"][0]["name"] == "Central Bar"
    # The Python peer's link timing is the one the browser is served.
    options = PeerOptions()
    timing = (options.connect_timeout, options.retry_min, options.retry_max)
    assert timing == tuple(served["peer"][k] for k in ("connectTimeout", "retryMin", "retryMax"))
