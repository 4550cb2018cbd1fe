// The bar everyone agrees on, fetched from /api/space (chatsubo/space.py defines it).

/** Fetch the shared map, distance model and peer-to-peer rules. */
export async function loadSpace() {
  const response = await fetch("/api/space");
  if (!response.ok) throw new Error(`GET /api/space answered ${response.status}`);
  return response.json();
}

/** The zone that (x, y) lies in, or null: the first match, as in BarMap.zone_at. */
export function zoneAt(map, x, y) {
  return (
    map.zones.find(
      (z) => z.x <= x && x < z.x + z.width && z.y <= y && y < z.y + z.height,
    ) ?? null
  );
}

/** The nearest point inside the bar. */
export function clamp(map, x, y) {
  return [Math.min(Math.max(x, 0), map.width), Math.min(Math.max(y, 0), map.height)];
}

/**
 * Linear gain for a voice `distance` meters away, as DistanceModel.gain in
 * Python: 1 within refDistance, an inverse roll-off, then a raised-cosine
 * fade from fadeFrom to exactly 0 at hearingRange.
 */
export function distanceGain(model, distance) {
  if (distance >= model.hearingRange) return 0;
  const ref = model.refDistance;
  let gain = ref / (ref + model.rolloffFactor * (Math.max(distance, ref) - ref));
  if (distance > model.fadeFrom) {
    const fade = (distance - model.fadeFrom) / (model.hearingRange - model.fadeFrom);
    gain *= 0.5 * (1 + Math.cos(Math.PI * fade));
  }
  return gain;
}

/** Furniture that is floor: people stand on it (space.WALKABLE). */
const WALKABLE = new Set(["dancefloor"]);
/** Random spots tried in an area before looking further. */
const SPOT_TRIES = 64;

/** Whether a person standing at (x, y) would be on `item`, within `margin` (Furniture.blocks). */
function blocks(item, x, y, margin) {
  if (WALKABLE.has(item.kind)) return false;
  return (
    item.x - margin < x && x < item.x + item.width + margin &&
    item.y - margin < y && y < item.y + item.height + margin
  );
}

/** Whether a person may be placed at (x, y): inside, off furniture, apart from `others` (BarMap.is_free). */
export function isFree(map, x, y, others) {
  const m = map.margin;
  if (!(m <= x && x <= map.width - m && m <= y && y <= map.height - m)) return false;
  if ((map.furniture ?? []).some((item) => blocks(item, x, y, m))) return false;
  return others.every(([ox, oy]) => Math.hypot(x - ox, y - oy) >= map.personalSpace);
}

/**
 * A random free spot in `area` (the arrival area by default), else anywhere
 * free; with the bar crowded, the spot tried that is farthest from anyone
 * (BarMap.free_spot).
 */
export function freeSpot(map, others, area = map.arrival) {
  let best = clamp(map, area.x + area.width / 2, area.y + area.height / 2);
  let bestRoom = -1;
  for (const place of [area, { x: 0, y: 0, width: map.width, height: map.height }]) {
    for (let i = 0; i < SPOT_TRIES; i++) {
      const x = place.x + Math.random() * place.width;
      const y = place.y + Math.random() * place.height;
      if (isFree(map, x, y, others)) return [x, y];
      if (isFree(map, x, y, [])) {
        const room = Math.min(...others.map(([ox, oy]) => Math.hypot(x - ox, y - oy)));
        if (room > bestRoom) [best, bestRoom] = [[x, y], room];
      }
    }
  }
  return best;
}
