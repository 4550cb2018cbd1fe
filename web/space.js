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

/** Linear gain for a voice `distance` meters away: DistanceModel.gain in Python. */
export function distanceGain(model, distance) {
  const ref = model.refDistance;
  const d = Math.min(Math.max(distance, ref), model.maxDistance);
  const gain = ref / (ref + model.rolloffFactor * (d - ref));
  return gain < model.muteBelow ? 0 : gain;
}

/** Where a newcomer stands: near the middle of the arrival zone, as BarMap.arrival_spot. */
export function arrivalSpot(map) {
  const zone = map.zones.find((z) => z.name.toLowerCase() === map.arrival.toLowerCase());
  const half = map.arrivalSpread / 2;
  const jitter = () => (Math.random() * 2 - 1) * half;
  return clamp(map, zone.x + zone.width / 2 + jitter(), zone.y + zone.height / 2 + jitter());
}
