// The rules every client of the signaling protocol follows, served at
// /api/protocol (chatsubo/protocol.py defines them), and the shapes of the
// signals peers send each other: the twin of chatsubo.protocol's peer signals,
// checked against the same fixture (tests/fixtures/peer-messages.json).

/** Fetch the client rules: close codes, reconnect timing, name limits. */
export async function loadProtocol() {
  const response = await fetch("/api/protocol");
  if (!response.ok) throw new Error(`GET /api/protocol answered ${response.status}`);
  return response.json();
}

/** The rule for a close code the server sends, or undefined for any other code. */
export function closeRule(rules, code) {
  return rules.closeCodes.find((rule) => rule.code === code);
}

/** What to do after the socket closed with `code`: "never", "at_once" or "backoff". */
export function reconnectAfter(rules, code) {
  return closeRule(rules, code)?.reconnect ?? "backoff";
}

/** Why the server closed the socket, in plain words: protocol.closing_words in Python. */
export function closeMessage(rules, code, errorCode = null) {
  const rule = closeRule(rules, code);
  if (rule === undefined) return code ? `the connection closed (${code})` : "the connection dropped";
  return rule.reasons[errorCode ?? ""] ?? rule.meaning;
}

/**
 * Seconds to wait before reconnect attempt `attempt` (0 first) of an outage
 * that began `outage` seconds ago; `draw` is a random number in [0, 1).
 * protocol.reconnect_delay in Python gives the same.
 */
export function reconnectDelay(rules, attempt, outage, draw) {
  const delays = rules.reconnectDelays;
  const base = outage >= rules.fastReconnectFor ? rules.reconnectMax : delays[Math.min(attempt, delays.length - 1)];
  return base * (1 - rules.reconnectJitter * draw);
}

/** A trickled candidate's line: `candidate:...`, or empty for the end of candidates. */
const CANDIDATE = /^(?:candidate:[^\r\n]*)?$/;

const optionalString = (value) => value == null || (typeof value === "string" && value.isWellFormed());

/**
 * A signal's `data`, validated as chatsubo.protocol.decode_peer_signal does:
 * `{description}` for an offer or answer, `{candidate}` for a trickled
 * candidate, `{end: true}` for null or an empty candidate (the end of
 * candidates), or null when it is none of these.
 */
export function decodeSignal(data) {
  if (data === null) return { end: true };
  if (typeof data !== "object" || Array.isArray(data)) return null;
  if (data.type != null) {
    const { type, sdp } = data;
    if ((type === "offer" || type === "answer") && typeof sdp === "string" && sdp.isWellFormed()) {
      return { description: { type, sdp } };
    }
    return null;
  }
  const { candidate, sdpMid, sdpMLineIndex, usernameFragment } = data;
  if (typeof candidate !== "string" || !candidate.isWellFormed() || !CANDIDATE.test(candidate)) return null;
  if (!optionalString(sdpMid) || !optionalString(usernameFragment)) return null;
  const index = sdpMLineIndex;
  if (index != null && !(Number.isInteger(index) && index >= 0 && index <= 65535)) return null;
  return candidate === "" ? { end: true } : { candidate: { candidate, sdpMid, sdpMLineIndex, usernameFragment } };
}
