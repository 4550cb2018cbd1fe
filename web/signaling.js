// The page's link to the signaling server, the twin of chatsubo/peer/signaling.py.
//
// One WebSocket for the whole visit: it watches the lobby, joins a room and
// relays that room's signals. When it drops it reconnects with backoff and
// jitter and rejoins with the resume token, so the peer id stays the same and
// the peer-to-peer connections never notice. docs/protocol.md defines every
// message sent and received here.

import { Emitter } from "./events.js";
import { closeMessage, reconnectAfter, reconnectDelay } from "./protocol.js";


/** The server refused a request: `code` is one of the protocol's error codes. */
export class SignalingError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "SignalingError";
    this.code = code;
  }
}

/** The WebSocket URL of the server that served this page. */
export function websocketUrl(location = window.location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

/**
 * Membership of at most one room, through drops and server restarts.
 *
 * Events: `peer_list`, `peer_joined`, `peer_left`, `peer_updated`, `signal`,
 * `link`, `unlink`, `positions`, `rooms` and `server_error`, each with the
 * server's message;
 * `connectionstatechange` with `connectionState` (`new`, `connecting`,
 * `connected`, `reconnecting`, `closed`); and `retrying` ({seconds, why})
 * before each wait to reconnect. After a rejoin, a peer the new peer_list
 * does not name gets the server's grace period to come back, then a
 * `peer_left` with reason `timeout` (as chatsubo/peer/signaling.py).
 */
export class SignalingClient extends Emitter {
  /**
   * @param rules the client rules from /api/protocol (protocol.js, loadProtocol):
   *   close codes, reconnect backoff and ping interval
   */
  constructor(rules, url = websocketUrl()) {
    super();
    this.rules = rules;
    this.url = url;
    this.connectionState = "new";
    this.peerId = null;
    this.resumeToken = null;
    this.iceServers = [];
    /** Whether every join needs an invite (`chatsubo serve --require-token`), as welcome says. */
    this.inviteOnly = false;
    /** The invite the lobby shows rooms for, sent again after every reconnect. */
    this._watchToken = null;
    /** Our zone, told again after every rejoin: a restarted server has forgotten it. */
    this.zone = null;
    /** Where we stand ({x, y}), told again after every rejoin too; sent at most 4 times a second. */
    this.position = null;
    this._positionTimer = null;
    this._positionSentAt = -Infinity;
    /** The room we are in, or joining; rejoined after every reconnect. */
    this.room = null;
    this._watching = false;
    this._ws = null;
    /** Reconnect attempts in this outage, and when it began (ms), for reconnectDelay. */
    this._attempt = 0;
    this._outageBegan = null;
    this._retryTimer = null;
    /** The code of the last `error`: with the close code, it says why we were closed. */
    this._lastError = null;
    /** Everyone in the room as far as we know, and a timer for each a rejoin did not list. */
    this._members = new Set();
    this._unconfirmed = new Map();
    this._grace = 0;
    this._pingTimer = null;
    this._lastHeard = 0;
    this._pendingJoin = null;
    /** Between sending `join` and its answer: an error then is the join's refusal. */
    this._joining = false;
    this._closed = false;
  }

  /** Open the socket and keep it open until `close()`. */
  start() {
    if (this._ws === null && this._retryTimer === null) this._open();
  }

  /** Reconnect now rather than after the backoff (a "Try again" button). */
  retry() {
    if (this._ws !== null || this._closed) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._attempt = 0;
    this._open();
  }

  /** Stop for good: leave the room and close the socket. */
  close() {
    this._closed = true;
    clearTimeout(this._retryTimer);
    clearInterval(this._pingTimer);
    clearTimeout(this._positionTimer);
    this._forgetMembers();
    this._rejectJoin(new SignalingError("closed", "closed before joining"));
    if (this._ws !== null) {
      this._send({ type: "leave" });
      this._ws.close(1000, "bye");
    }
    this._setState("closed");
  }

  /**
   * Enter a room; resolves with the `peer_list` message.
   *
   * Rejects with a SignalingError: the server's refusal (`room_full`,
   * `unauthorized` without a valid invite, `bad_message` for a bad name) or
   * `unreachable` when the server cannot be reached right now. The socket
   * keeps trying to reconnect either way. `token` is the room's invite, if any.
   */
  join(roomId, name, token = null) {
    if (this.room !== null) {
      return Promise.reject(new SignalingError("already_joined", "already in a room"));
    }
    this.room = { roomId, name, token };
    const joined = new Promise((resolve, reject) => {
      this._pendingJoin = { resolve, reject };
    });
    if (this.connectionState === "connected") {
      this._write(this._joinMessage(null));
      this._joining = true;
    } else {
      // Sent on the next welcome; a failed attempt refuses it as unreachable.
      this.retry();
    }
    return joined;
  }

  /** Leave the room; the socket stays open for the lobby. */
  leave() {
    if (this.room === null) return;
    this.room = null;
    this.resumeToken = null;
    this.zone = null;
    this.position = null;
    clearTimeout(this._positionTimer);
    this._positionTimer = null;
    this._forgetMembers();
    this._rejectJoin(new SignalingError("closed", "left before joining"));
    this._send({ type: "leave" });
  }

  /** Pass `data` to peer `to`; false when the server cannot be reached right now. */
  signal(to, data) {
    return this._send({ type: "signal", to, data });
  }

  /**
   * Change our name or zone (a zone of null clears it), or where we stand
   * (`x` and `y`, in meters). Positions go out at most 4 times a second:
   * moves in between are folded into the next one, so the last always arrives.
   */
  update({ x, y, ...fields }) {
    if (x !== undefined && y !== undefined && (x !== this.position?.x || y !== this.position?.y)) {
      this.position = { x, y };
      this._queuePosition();
    }
    if (Object.keys(fields).length === 0) return true;
    if (this.room !== null && "name" in fields) this.room.name = fields.name;
    if ("zone" in fields) this.zone = fields.zone;
    return this._send({ type: "update", ...fields });
  }

  _queuePosition() {
    if (this._positionTimer !== null) return;
    const due = this._positionSentAt + 1000 / this.rules.positionUpdatesPerSecond;
    this._positionTimer = setTimeout(() => {
      this._positionTimer = null;
      // While we are away the rejoin tells the server; until then this one is lost.
      if (this.position !== null && this._send({ type: "update", ...this.position })) {
        this._positionSentAt = performance.now();
      }
    }, Math.max(0, due - performance.now()));
  }

  /**
   * Receive the lobby's room list as `rooms` events, now and after every
   * reconnect; an invite-only server lists the rooms the invite `token` opens.
   */
  watchRooms(token = null) {
    this._watching = true;
    this._watchToken = token;
    this._send(this._watchMessage());
  }

  _watchMessage() {
    return this._watchToken === null
      ? { type: "watch_rooms" }
      : { type: "watch_rooms", token: this._watchToken };
  }

  _joinMessage(resume) {
    const { roomId, name, token } = this.room;
    const join = { type: "join", roomId, name };
    if (resume !== null) join.resume = resume;
    if (token !== null) join.token = token;
    return join;
  }

  unwatchRooms() {
    this._watching = false;
    this._send({ type: "unwatch_rooms" });
  }

  // --- the connection ----------------------------------------------------------

  _setState(state) {
    if (state === this.connectionState) return;
    this.connectionState = state;
    this.emit("connectionstatechange", state);
  }

  _open() {
    this._retryTimer = null;
    this._setState(this.peerId === null ? "connecting" : "reconnecting");
    const ws = new WebSocket(this.url);
    this._ws = ws;
    ws.onmessage = (event) => {
      this._lastHeard = Date.now();
      this._receive(event.data);
    };
    ws.onclose = (event) => {
      if (this._ws === ws) this._dropped(event.code);
    };
  }

  _dropped(code) {
    this._ws = null;
    this._joining = false;
    clearInterval(this._pingTimer);
    if (this._closed) return;
    const reconnect = reconnectAfter(this.rules, code);
    if (reconnect === "never") {
      this.room = null;
      this._forgetMembers();
      this._setState("closed");
      const why = closeMessage(this.rules, code, this._lastError);
      this.emit("server_error", { type: "error", code: "closed", closeCode: code, message: `Disconnected: ${why}.` });
      return;
    }
    this._setState(this.peerId === null ? "connecting" : "reconnecting");
    // A first join that cannot go ahead is refused now, not after the backoff.
    if (this._pendingJoin !== null && this.resumeToken === null) {
      this.room = null;
      this._rejectJoin(new SignalingError("unreachable", "the server cannot be reached"));
    }
    this._outageBegan ??= Date.now();
    // After a restart the server is coming straight back: only spread the herd out.
    const seconds =
      reconnect === "at_once"
        ? Math.random() * this.rules.restartSpread
        : reconnectDelay(this.rules, this._attempt++, (Date.now() - this._outageBegan) / 1000, Math.random());
    this._retryTimer = setTimeout(() => this._open(), seconds * 1000);
    this.emit("retrying", { seconds, why: closeMessage(this.rules, code, this._lastError) });
  }

  _greeted(welcome) {
    this.iceServers = welcome.iceServers;
    this._grace = welcome.limits.grace;
    this.inviteOnly = welcome.inviteOnly ?? false;
    this._lastError = null;
    if (this.resumeToken === null) this.peerId = welcome.peerId;
    // In the lobby the outage is over now; in a room, once the rejoin succeeds.
    if (this.room === null) this._outageOver();
    this._lastHeard = Date.now();
    this._pingTimer = setInterval(() => this._ping(), this.rules.pingInterval * 1000);
    if (this._watching) this._write(this._watchMessage());
    if (this.room === null) {
      this._setState("connected");
    } else {
      this._joining = this._write(this._joinMessage(this.resumeToken));
    }
  }

  _ping() {
    // A server silent 1.5 ping intervals is given up on, as the Python client does.
    if (Date.now() - this._lastHeard > 1.5 * this.rules.pingInterval * 1000) {
      // A half-open socket: close it ourselves and reconnect.
      const ws = this._ws;
      this._dropped(1006);
      ws?.close();
      return;
    }
    this._write({ type: "ping", t: Date.now() });
  }

  _receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    switch (message.type) {
      case "welcome":
        this._greeted(message);
        break;
      case "ice_servers":
        // Fresh TURN credentials, for the links made from now on.
        this.iceServers = message.iceServers;
        break;
      case "peer_list":
        this._joining = false;
        this.peerId = message.peerId;
        this.resumeToken = message.resumeToken ?? this.resumeToken;
        // The invite fixed our name: the server's word is the one the room sees.
        if (message.name !== undefined) this.room.name = message.name;
        this._setState("connected");
        this._outageOver();
        this._retell();
        this._confirm(new Set(message.peers.map((info) => info.peerId)));
        this.emit("peer_list", message);
        this._pendingJoin?.resolve(message);
        this._pendingJoin = null;
        break;
      case "error":
        this._lastError = message.code;
        this._error(message);
        break;
      case "peer_joined":
        this._arrived(message.peerId);
        this.emit(message.type, message);
        break;
      case "peer_left":
        this._gone(message.peerId);
        this.emit(message.type, message);
        break;
      case "pong":
        break;
      default:
        this.emit(message.type, message);
    }
  }

  _error(error) {
    if (!this._joining) {
      this.emit("server_error", error);
      return;
    }
    if (error.code === "unavailable") {
      // The server closes with 1013 next, and the schedule brings us back.
      this.emit("server_error", error);
      return;
    }
    if (error.code === "bad_resume") {
      this.resumeToken = null;
      this._write(this._joinMessage(null));
      return;
    }
    this._joining = false;
    if (this._pendingJoin !== null) {
      // The first join was refused: stay connected, in the lobby.
      this.room = null;
      this._setState("connected");
      this._rejectJoin(new SignalingError(error.code, error.message));
      return;
    }
    // A rejoin was refused (the room filled up meanwhile): report it, try again later.
    this.emit("server_error", error);
    this._ws?.close();
  }

  /** After every (re)join: a restarted server has forgotten our zone and where we stand. */
  _retell() {
    const update = { type: "update" };
    if (this.zone !== null) update.zone = this.zone;
    if (this.position !== null) Object.assign(update, this.position);
    if (Object.keys(update).length === 1) return;
    if (this._write(update) && this.position !== null) this._positionSentAt = performance.now();
  }

  _outageOver() {
    this._attempt = 0;
    this._outageBegan = null;
  }

  // --- who is in the room: after a rejoin, those not listed get the grace period --

  _confirm(listed) {
    for (const peerId of this._members) {
      if (listed.has(peerId) || this._unconfirmed.has(peerId)) continue;
      this._unconfirmed.set(peerId, setTimeout(() => this._expire(peerId), this._grace * 1000));
    }
    for (const peerId of listed) this._arrived(peerId);
  }

  _arrived(peerId) {
    this._members.add(peerId);
    this._stopWaiting(peerId);
  }

  _gone(peerId) {
    this._members.delete(peerId);
    this._stopWaiting(peerId);
  }

  _stopWaiting(peerId) {
    clearTimeout(this._unconfirmed.get(peerId));
    this._unconfirmed.delete(peerId);
  }

  /** A peer that left while we were away: told as the server would have told it. */
  _expire(peerId) {
    this._gone(peerId);
    this.emit("peer_left", { type: "peer_left", peerId, reason: "timeout" });
  }

  _forgetMembers() {
    for (const timer of this._unconfirmed.values()) clearTimeout(timer);
    this._unconfirmed.clear();
    this._members.clear();
  }

  _rejectJoin(error) {
    this._pendingJoin?.reject(error);
    this._pendingJoin = null;
  }

  _send(message) {
    if (this.connectionState !== "connected") return false;
    return this._write(message);
  }

  _write(message) {
    const ws = this._ws;
    if (ws === null || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(message));
    return true;
  }
}
