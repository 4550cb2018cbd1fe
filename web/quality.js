// How each link is doing, at a glance: its round trip, loss and jitter read
// from getStats(), in the levels of the contract (`peer.quality` in
// /api/space, LinkQuality in chatsubo/space.py), and whether it goes direct
// or is relayed through TURN.

/**
 * The level of a link with these figures (null: not known), as
 * LinkQuality.level in Python: "poor" when any known figure is beyond
 * `rules.poor`; "unknown" without a round trip; "good" when every known
 * figure is within `rules.good`; "fair" otherwise. Round trip and jitter in
 * ms, loss as a fraction.
 */
export function qualityLevel(rules, rtt, loss, jitter) {
  const figures = [
    [rtt, rules.good.rtt, rules.poor.rtt],
    [loss, rules.good.loss, rules.poor.loss],
    [jitter, rules.good.jitter, rules.poor.jitter],
  ];
  // `== null`: undefined is not known either.
  if (figures.some(([value, , poor]) => value != null && value > poor)) return "poor";
  if (rtt == null) return "unknown";
  return figures.every(([value, good]) => value == null || value <= good) ? "good" : "fair";
}

/**
 * The figures in one getStats() report: {rtt, loss, jitter, route, counters}.
 * `before` is the previous reading's `counters` for the same connection, or
 * null: loss is then over the whole call so far, afterwards over the interval.
 */
export function readFigures(report, before) {
  let transport = null;
  let inbound = null;
  let remoteInbound = null;
  let pair = null;
  report.forEach((stats) => {
    if (stats.type === "transport" && stats.selectedCandidatePairId) transport = stats;
    else if (stats.type === "inbound-rtp" && stats.kind === "audio") inbound = stats;
    else if (stats.type === "remote-inbound-rtp" && stats.kind === "audio") remoteInbound = stats;
    // Browsers without transport.selectedCandidatePairId mark the pair itself.
    else if (stats.type === "candidate-pair" && (stats.selected || (stats.nominated && stats.state === "succeeded"))) {
      pair ??= stats;
    }
  });
  if (transport !== null) pair = report.get(transport.selectedCandidatePairId) ?? pair;
  // RTCP receiver reports give a round trip every second or so while we send
  // audio; the pair's own, from ICE consent checks, only every few seconds.
  const rttSeconds = remoteInbound?.roundTripTime ?? pair?.currentRoundTripTime;
  const counters = inbound === null ? null : { lost: inbound.packetsLost ?? 0, received: inbound.packetsReceived ?? 0 };
  let loss = null;
  let jitter = null;
  if (counters !== null) {
    const lost = Math.max(0, counters.lost - (before?.lost ?? 0));
    const received = Math.max(0, counters.received - (before?.received ?? 0));
    // Nothing arrived meanwhile (they send no audio): nothing to judge by.
    if (lost + received > 0) {
      loss = lost / (lost + received);
      jitter = typeof inbound.jitter === "number" ? inbound.jitter * 1000 : null;
    }
  }
  let route = null;
  if (pair) {
    const types = [report.get(pair.localCandidateId), report.get(pair.remoteCandidateId)].map((c) => c?.candidateType);
    route = types.includes("relay") ? "relayed" : "direct";
  }
  return { rtt: typeof rttSeconds === "number" ? rttSeconds * 1000 : null, loss, jitter, route, counters };
}

/** Words for a link's figures: {label} for screen readers, {title} for the figures on hover. */
export function describeQuality(figures) {
  const { level, rtt, loss, jitter, route } = figures;
  const relayed = route === "relayed" ? ", relayed through TURN" : "";
  const label = level === "unknown" ? "connection not measured yet" : `connection ${level}${relayed}`;
  const parts = [rtt === null ? "Round trip not measured yet" : `Round trip ${Math.round(rtt)} ms`];
  if (loss === null) parts.push("loss and jitter: no audio from them");
  else parts.push(`loss ${(100 * loss).toFixed(1)} %`);
  if (jitter !== null) parts.push(`jitter ${Math.round(jitter)} ms`);
  if (route !== null) parts.push(route === "relayed" ? "relayed through TURN" : "direct");
  return { label, title: parts.join(" · ") };
}

/** Reads links' stats, one reading per connection and interval (`rules` is `peer.quality`). */
export class LinkQuality {
  constructor(rules) {
    this.rules = rules;
    /** RTCPeerConnection -> its previous counters; a replaced connection starts afresh. */
    this._counters = new WeakMap();
  }

  /** The figures and level of the connection `pc` now; rejects once it is closed. */
  async measure(pc) {
    const figures = readFigures(await pc.getStats(), this._counters.get(pc) ?? null);
    this._counters.set(pc, figures.counters);
    return { ...figures, level: qualityLevel(this.rules, figures.rtt, figures.loss, figures.jitter) };
  }
}

/** What a link without a reading shows. */
export const UNMEASURED = Object.freeze({ level: "unknown", rtt: null, loss: null, jitter: null, route: null });
