"""Which members of a room are linked peer to peer: everyone in a small room, the near in a big one.

A full mesh costs every member a stream per other member, so it holds about
ten people. Beyond the hearing range a voice is exactly silent (see
:class:`~chatsubo.space.DistanceModel`), so a big room links each member only
to the people within earshot, at most ``max_links`` of them, nearest first.

:func:`choose_links` is the rule, a pure function of where everyone stands,
which pairs are linked now and since when each has been far apart; the
server runs it and tells both ends of every change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Set
from dataclasses import dataclass

from ..space import BAR, Point

#: Pairs ranked below this (meters) are found through a grid, before the rest.
_NEAR = 2.0

#: A linked pair of peer ids, in sorted order.
Pair = tuple[str, str]


def pair(a: str, b: str) -> Pair:
    """The pair of ``a`` and ``b``, the same whichever way round."""
    return (a, b) if a < b else (b, a)


@dataclass(frozen=True)
class LinkRules:
    """The rule's numbers; the defaults fit the bar's 11 m hearing range."""

    #: Rooms of up to this many people link everyone: today's full mesh.
    full_mesh_up_to: int = 10
    #: The most links one member has in a bigger room.
    max_links: int = 8
    #: Pairs this close are linked: a little beyond the hearing range, so
    #: that audio flows before it becomes audible.
    link_range: float = BAR.distance_model.hearing_range + 1.5
    #: Linked pairs are unlinked only beyond this, ...
    unlink_range: float = BAR.distance_model.hearing_range + 4.0
    #: ... once they have stayed beyond it this many seconds.
    hysteresis: float = 3.0
    #: A pair already linked counts as this much nearer, so that a newcomer
    #: at nearly the same distance does not take its place.
    stickiness: float = 1.5


@dataclass(frozen=True)
class Links:
    """The rule's answer: the pairs to link, and since when each far linked pair has been far."""

    pairs: frozenset[Pair]
    far_since: Mapping[Pair, float]


def choose_links(
    members: Set[str],
    positions: Mapping[str, Point],
    linked: Set[Pair],
    far_since: Mapping[Pair, float],
    now: float,
    rules: LinkRules,
) -> Links:
    """The pairs to link among ``members``, who stand at ``positions``.

    ``linked`` are the pairs linked now; ``far_since`` says since when each
    linked pair has stood beyond the unlink range (the value returned last
    time). In a big room a member without a position is linked to nobody
    until it says where it stands.
    """
    if len(members) <= rules.full_mesh_up_to:
        ordered = sorted(members)
        everyone = frozenset(pair(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1 :])
        return Links(everyone, {})
    placed = sorted(m for m in members if m in positions)
    degree = dict.fromkeys(placed, 0)
    chosen: set[Pair] = set()
    still_far: dict[Pair, float] = {}

    def score(a: str, b: str) -> float | None:
        """Where the pair ranks (lower first), or None when it may not be linked."""
        (ax, ay), (bx, by) = positions[a], positions[b]
        distance = math.hypot(ax - bx, ay - by)
        key = (a, b)
        if key in linked:
            if distance > rules.unlink_range:
                since = still_far[key] = far_since.get(key, now)
                if now - since >= rules.hysteresis:
                    return None
            return distance - rules.stickiness
        return distance if distance <= rules.link_range else None

    def choose(candidates: list[tuple[float, Pair]]) -> None:
        # Nearest first, both ends with room to spare: a greedy matching in
        # which every edge is chosen by both its ends, never by one alone.
        candidates.sort()
        for _, (a, b) in candidates:
            if degree[a] < rules.max_links and degree[b] < rules.max_links:
                chosen.add((a, b))
                degree[a] += 1
                degree[b] += 1

    # In a crowd everyone fills up on the people right around them, so the
    # pairs that rank below _NEAR are taken first, found through a grid
    # rather than among all n²; then the rest, among those with room left.
    # Both passes together take the pairs in the order one sort would.
    cell = _NEAR + rules.stickiness
    grid: dict[tuple[int, int], list[str]] = {}
    for m in placed:
        x, y = positions[m]
        grid.setdefault((int(x // cell), int(y // cell)), []).append(m)
    near: list[tuple[float, Pair]] = []
    for (cx, cy), here in grid.items():
        for dx, dy in ((0, 0), (1, -1), (1, 0), (1, 1), (0, 1)):
            there = here if (dx, dy) == (0, 0) else grid.get((cx + dx, cy + dy), [])
            for i, a in enumerate(here):
                for b in here[i + 1 :] if there is here else there:
                    key = (a, b) if a < b else (b, a)
                    rank = score(*key)
                    if rank is not None and rank < _NEAR:
                        near.append((rank, key))
    choose(near)
    room = [m for m in placed if degree[m] < rules.max_links]
    rest: list[tuple[float, Pair]] = []
    for i, a in enumerate(room):
        for b in room[i + 1 :]:
            rank = score(a, b)
            if rank is not None and rank >= _NEAR:
                rest.append((rank, (a, b)))
    choose(rest)
    return Links(frozenset(chosen), {k: v for k, v in still_far.items() if k in chosen})
