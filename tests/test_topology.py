"""The link rule (chatsubo/server/topology.py): properties over random rooms, and its edges."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from chatsubo.server.topology import LinkRules, Links, Pair, choose_links, pair
from chatsubo.space import BAR, Point

RULES = LinkRules()
HEARING = BAR.distance_model.hearing_range

spots = st.tuples(st.floats(0, BAR.map.width), st.floats(0, BAR.map.height))
names = st.text("abcdefghijklmnopqrstuvwxyz", min_size=3, max_size=3)
rooms = st.dictionaries(names, spots, max_size=40)


def degrees(pairs: frozenset[Pair]) -> Counter[str]:
    return Counter(peer for link in pairs for peer in link)


def distance(positions: dict[str, Point], link: Pair) -> float:
    (ax, ay), (bx, by) = positions[link[0]], positions[link[1]]
    return math.hypot(ax - bx, ay - by)


def settle(positions: dict[str, Point], now: float = 0.0) -> Links:
    """The links of a room that has stood still: the rule applied until nothing changes."""
    links = choose_links(set(positions), positions, set(), {}, now, RULES)
    for _ in range(5):
        again = choose_links(set(positions), positions, links.pairs, links.far_since, now, RULES)
        if again.pairs == links.pairs:
            return again
        links = again
    raise AssertionError("the rule did not settle")


@settings(max_examples=200, deadline=None)
@given(rooms)
def test_small_rooms_are_a_full_mesh_and_big_ones_obey_the_rule(
    positions: dict[str, Point],
) -> None:
    links = choose_links(set(positions), positions, set(), {}, 0.0, RULES)
    n = len(positions)
    if n <= RULES.full_mesh_up_to:
        assert len(links.pairs) == n * (n - 1) // 2
        return
    used = degrees(links.pairs)
    assert max(used.values(), default=0) <= RULES.max_links
    assert all(distance(positions, link) <= RULES.link_range for link in links.pairs)
    # Nobody who could hear someone is left unlinked from them with room to spare.
    names = sorted(positions)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if (a, b) not in links.pairs and distance(positions, (a, b)) < HEARING:
                assert RULES.max_links in (used[a], used[b]), (a, b)


@settings(max_examples=100, deadline=None)
@given(rooms)
def test_a_still_room_keeps_its_links(positions: dict[str, Point]) -> None:
    """Once settled, the rule changes nothing while nobody moves: no churn."""
    links = settle(positions)
    again = choose_links(set(positions), positions, links.pairs, links.far_since, 1.0, RULES)
    assert again.pairs == links.pairs


@settings(max_examples=100, deadline=None)
@given(rooms, st.randoms(use_true_random=False))
def test_the_answer_does_not_depend_on_order(positions: dict[str, Point], rng: object) -> None:
    names = list(positions)
    assert hasattr(rng, "shuffle")
    rng.shuffle(names)
    shuffled = {name: positions[name] for name in names}
    assert settle(shuffled).pairs == settle(positions).pairs


def crowd(n: int, x: float = 1.0) -> dict[str, Point]:
    """``n`` people in a tight column at ``x``: a big room where everyone hears everyone."""
    return {f"p{i:02d}": (x, 1.0 + 0.3 * i) for i in range(n)}


def test_a_far_link_goes_only_after_the_hysteresis() -> None:
    # Two groups of six at either end of the bar: a big room, but nobody is full.
    positions = {**crowd(6), **{f"q{i}": (23.0, 1.0 + 0.3 * i) for i in range(6)}}
    positions["walker"] = (2.0, 2.0)
    links = settle(positions)
    walker_links = {link for link in links.pairs if "walker" in link}
    assert walker_links
    positions["walker"] = (12.0, 15.9)
    assert distance(positions, next(iter(walker_links))) > RULES.unlink_range
    members = set(positions)
    first = choose_links(members, positions, links.pairs, links.far_since, 100.0, RULES)
    assert walker_links <= first.pairs
    held = choose_links(members, positions, first.pairs, first.far_since, 102.9, RULES)
    assert walker_links <= held.pairs
    gone = choose_links(members, positions, held.pairs, held.far_since, 103.0, RULES)
    assert not {link for link in gone.pairs if "walker" in link}
    # Coming back within the unlink range, but not the link range, before then resets the clock.
    positions["walker"] = (1.0, 15.5)
    assert RULES.link_range < distance(positions, ("p00", "walker")) < RULES.unlink_range
    back = choose_links(members, positions, first.pairs, first.far_since, 102.0, RULES)
    assert back.far_since == {}
    assert walker_links <= back.pairs


def test_an_existing_link_outlasts_a_slightly_nearer_newcomer() -> None:
    """A full member keeps its link rather than swap it for one a little nearer."""
    positions = crowd(11)
    linked = settle(positions).pairs
    a = "p00"
    farthest = max(
        (link for link in linked if a in link), key=lambda link: distance(positions, link)
    )
    gap = distance(positions, farthest)
    # A newcomer a little nearer to a than its farthest link, but not by the stickiness.
    positions["new"] = (1.0 - gap + 0.5, 1.0)
    assert distance(positions, pair(a, "new")) > gap - RULES.stickiness
    again = choose_links(set(positions), positions, linked, {}, 0.0, RULES)
    assert farthest in again.pairs


def test_a_member_without_a_position_waits_in_a_big_room() -> None:
    positions = crowd(12)
    members = {*positions, "unplaced"}
    links = choose_links(members, positions, set(), {}, 0.0, RULES)
    assert not {link for link in links.pairs if "unplaced" in link}
    small = choose_links({"a", "b", "c"}, {"a": (0.0, 0.0)}, set(), {}, 0.0, RULES)
    assert small.pairs == {("a", "b"), ("a", "c"), ("b", "c")}


def one_sort(
    members: set[str],
    positions: dict[str, Point],
    linked: frozenset[Pair],
    far_since: Mapping[Pair, float],
    now: float,
) -> Links:
    """The rule as written first: every pair ranked in one sort; what the fast one must match."""
    if len(members) <= RULES.full_mesh_up_to:
        return choose_links(members, positions, linked, far_since, now, RULES)
    placed = sorted(m for m in members if m in positions)
    candidates: list[tuple[float, Pair]] = []
    still_far: dict[Pair, float] = {}
    for i, a in enumerate(placed):
        for b in placed[i + 1 :]:
            d = distance(positions, (a, b))
            if (a, b) in linked:
                if d > RULES.unlink_range:
                    since = still_far[a, b] = far_since.get((a, b), now)
                    if now - since >= RULES.hysteresis:
                        continue
                candidates.append((d - RULES.stickiness, (a, b)))
            elif d <= RULES.link_range:
                candidates.append((d, (a, b)))
    candidates.sort()
    used: Counter[str] = Counter()
    chosen: set[Pair] = set()
    for _, (a, b) in candidates:
        if used[a] < RULES.max_links and used[b] < RULES.max_links:
            chosen.add((a, b))
            used[a] += 1
            used[b] += 1
    return Links(frozenset(chosen), {k: v for k, v in still_far.items() if k in chosen})


crowds = st.dictionaries(
    names,
    st.tuples(st.floats(0, BAR.map.width / 3), st.floats(0, BAR.map.height / 3)),
    min_size=11,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(rooms, crowds), st.randoms(use_true_random=False), st.floats(0, 5))
def test_the_grid_takes_pairs_in_the_order_of_one_sort(
    positions: dict[str, Point], rng: object, later: float
) -> None:
    """Dense or sparse, still or after some walked off: the same links as ranking all pairs."""
    assert hasattr(rng, "uniform")
    members = set(positions)
    first = choose_links(members, positions, set(), {}, 0.0, RULES)
    assert first == one_sort(members, positions, frozenset(), {}, 0.0)
    moved = {
        m: (x + rng.uniform(-20, 20), y + rng.uniform(-20, 20)) for m, (x, y) in positions.items()
    }
    then = choose_links(members, moved, first.pairs, {}, 1.0, RULES)
    assert then == one_sort(members, moved, first.pairs, {}, 1.0)
    last = choose_links(members, moved, then.pairs, then.far_since, 1.0 + later, RULES)
    assert last == one_sort(members, moved, then.pairs, then.far_since, 1.0 + later)
