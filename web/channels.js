// The messages of the peer-to-peer data channels, the twin of
// chatsubo/channels.py: the same shapes and the same limits (the `peer` part
// of /api/space), checked against the same fixture as the Python decoders
// (tests/fixtures/peer-messages.json). Anything else is dropped, never fatal.

const utf8 = new TextEncoder();

/** Characters as Python counts them: code points, not UTF-16 units. */
function codePoints(text) {
  let n = 0;
  for (const _ of text) n += 1;
  return n;
}

function isText(value, min, max) {
  if (typeof value !== "string" || !value.isWellFormed()) return false;
  const n = codePoints(value);
  return n >= min && n <= max;
}

/** The message in `data` if it is JSON of `type` within the size limit; else null. */
function parse(data, type, rules) {
  // The limit is in UTF-8 bytes, of which every UTF-16 unit is at least one.
  if (typeof data !== "string" || data.length > rules.maxMessageBytes) return null;
  if (utf8.encode(data).length > rules.maxMessageBytes) return null;
  let message;
  try {
    message = JSON.parse(data);
  } catch {
    return null;
  }
  const isObject = message !== null && typeof message === "object" && !Array.isArray(message);
  return isObject && message.type === type ? message : null;
}

/** A `chat` message from the chat channel, or null. */
export function decodeChat(data, rules) {
  const message = parse(data, "chat", rules);
  const valid =
    message !== null &&
    isText(message.id, 1, rules.chatIdMaxChars) &&
    isText(message.text, 1, rules.chatMaxChars) &&
    Number.isFinite(message.ts);
  return valid ? message : null;
}

/** A `pos` message from the state channel, or null. */
export function decodePosition(data, rules) {
  const message = parse(data, "pos", rules);
  const valid =
    message !== null &&
    Number.isFinite(message.x) &&
    Number.isFinite(message.y) &&
    Number.isInteger(message.seq) &&
    message.seq >= 0 &&
    Number.isFinite(message.ts) &&
    (message.zone == null || isText(message.zone, 0, rules.zoneMaxChars));
  return valid ? message : null;
}
