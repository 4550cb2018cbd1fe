// A mesh peer: one RTCPeerConnection to every peer the server links us to,
// the twin of chatsubo/peer/mesh.py. The server's `link` says which end offers;
// `unlink` closes the connection for good. A link that does not connect in
// time, or fails later, is replaced with backoff while the pair stays linked.
// Links outlive signaling outages: after a rejoin, healthy links are kept as
// they are. docs/protocol.md ("One connection per pair", "Peer to peer")
// defines what goes over them.

import { decodeChat, decodePosition } from "./channels.js";
import { Emitter } from "./events.js";
import { decodeSignal } from "./protocol.js";
import { withOpusParameters } from "./sdp.js";

/**
 * How long signals from a peer not linked yet are held (ms): the peer's offer
 * may overtake the server's `link` to us (with several server instances).
 */
const HOLD_UNLINKED = 3000;

/** Every voice asks for Opus DTX, so that silence costs next to nothing. */
const DTX = { usedtx: 1 };

/** The connection to one remote peer, with its channels and its place in negotiation. */
export class Link {
  constructor(peerId, name, offerer, pc) {
    this.peerId = peerId;
    this.name = name;
    /** Whether we make the offers on this link (the server's `link` said so). */
    this.offerer = offerer;
    this.pc = pc;
    this.chat = null;
    this.state = null;
    this.stream = null;
    this.position = null;
    this.failures = 0;
    this.pendingCandidates = [];
    /** One peer's signals are applied strictly in order, each after the last. */
    this.signals = Promise.resolve();
    this.watchdog = null;
  }

  /** Whether the link is usable: connected, and chat can be sent on it. */
  get connected() {
    return this.pc.connectionState === "connected" && this.chat?.readyState === "open";
  }
}

/**
 * Keeps one connection to each peer the server links us to in the signaling
 * client's room: everyone in a small room, those within earshot in a big one.
 *
 * Events: `peerconnected` (peerId) once a link can carry chat,
 * `peerdisconnected` (peerId), `linkstatechange` ({peerId, state}) also when
 * the server links or unlinks a peer,
 * `chat` ({peerId, message}), `position` ({peerId, position}) and
 * `track` ({peerId, stream}) for each remote audio stream.
 */
export class MeshPeer extends Emitter {
  /**
   * @param signaling a joined (or joining) SignalingClient
   * @param rules the `peer` part of /api/space: channel specs, limits and link timing
   */
  constructor(signaling, rules) {
    super();
    this.signaling = signaling;
    this.rules = rules;
    /** @type {Map<string, Link>} */
    this.links = new Map();
    /** Peers the server says are in the room (or were, before an outage): id -> name. */
    this.present = new Map();
    /** Peers the server linked us to, and whether we offer: id -> offer. Kept across rejoins. */
    this.linked = new Map();
    /** Peers unlinked since: their late signals are dropped until they are linked again. */
    this._unlinked = new Set();
    /** After a rejoin, the links the server has not named again yet, and when they close. */
    this._unconfirmed = new Set();
    this._confirmTimer = null;
    this._joined = false;
    /** Signals from peers not linked yet: id -> {signals, timer} (HOLD_UNLINKED). */
    this._held = new Map();
    this._track = null;
    this._chatIds = 0;
    this._positionSeq = 0;
    this._position = null;
    this._positionSentAt = -Infinity;
    this._positionTimer = null;
    this._closing = false;
    this._unsubscribe = [
      signaling.on("peer_list", (m) => this._onPeerList(m)),
      signaling.on("peer_joined", (m) => this._onPeerJoined(m)),
      signaling.on("peer_left", (m) => this._onPeerLeft(m)),
      signaling.on("peer_updated", (m) => this._onPeerUpdated(m)),
      signaling.on("signal", (m) => this._onSignal(m)),
      signaling.on("link", (m) => this._onLink(m)),
      signaling.on("unlink", (m) => this._onUnlink(m)),
    ];
  }

  get peerId() {
    return this.signaling.peerId;
  }

  /** Our voice on every link, now and for links made later; null sends nothing. */
  setTrack(track) {
    this._track = track;
    for (const link of this.links.values()) this._attachTrack(link);
  }

  /** Close every link; the signaling client is left to the caller. */
  close() {
    this._closing = true;
    clearTimeout(this._positionTimer);
    clearTimeout(this._confirmTimer);
    for (const off of this._unsubscribe) off();
    for (const link of this.links.values()) this._closeLink(link);
    this.links.clear();
    for (const peerId of [...this._held.keys()]) this._dropHeld(peerId);
    this.linked.clear();
  }

  // --- what we say and where we stand -----------------------------------------

  /** Send a line of chat to everyone connected; returns the message. */
  say(text) {
    const message = { type: "chat", id: `${this.peerId}-${++this._chatIds}`, text, ts: Date.now() };
    const data = JSON.stringify(message);
    for (const link of this.links.values()) {
      if (link.chat?.readyState === "open") link.chat.send(data);
    }
    return message;
  }

  /**
   * Stand somewhere else; everyone connected is told, unless nothing changed.
   * Updates go out at most `positionRate` times a second; moves in between
   * are folded into the next one, so the last always arrives.
   */
  move(x, y, zone) {
    const current = this._position;
    if (current && current.x === x && current.y === y && current.zone === zone) return;
    this._position = { type: "pos", x, y, seq: ++this._positionSeq, ts: Date.now() };
    if (zone) this._position.zone = zone;
    if (this._positionTimer === null) {
      const due = this._positionSentAt + 1000 / this.rules.positionRate;
      this._positionTimer = setTimeout(() => this._publishPosition(), Math.max(0, due - performance.now()));
    }
  }

  _publishPosition() {
    this._positionTimer = null;
    this._positionSentAt = performance.now();
    this._position.ts = Date.now();
    const data = JSON.stringify(this._position);
    for (const link of this.links.values()) this._sendState(link, data);
  }

  /** Positions go stale fast: one is dropped rather than queued behind unsent data. */
  _sendState(link, data) {
    const state = link.state;
    if (state?.readyState === "open" && state.bufferedAmount < this.rules.stateBufferLimit) state.send(data);
  }

  // --- signaling events --------------------------------------------------------

  // Who is here; the server's `link` says whom to connect to, and who offers.
  // After a rejoin it names again every link it keeps; a server that
  // restarted has forgotten the others, which are closed.
  _onPeerList(message) {
    for (const info of message.peers) this.present.set(info.peerId, info.name);
    if (this._joined) {
      this._unconfirmed = new Set(this.linked.keys());
      clearTimeout(this._confirmTimer);
      this._confirmTimer = setTimeout(() => {
        for (const peerId of this._unconfirmed) this._onUnlink({ peerId });
        this._unconfirmed.clear();
      }, this.signaling.rules.linkConfirmWait * 1000);
    }
    this._joined = true;
  }

  _onPeerJoined(message) {
    this.present.set(message.peerId, message.name);
  }

  _onPeerLeft(message) {
    this.present.delete(message.peerId);
    this.linked.delete(message.peerId);
    this._unlinked.delete(message.peerId);
    this._dropHeld(message.peerId);
    const link = this.links.get(message.peerId);
    if (link === undefined) return;
    this.links.delete(message.peerId);
    this._closeLink(link);
  }

  _onPeerUpdated(message) {
    const link = this.links.get(message.peerId);
    if (link !== undefined) link.name = message.name;
    if (this.present.has(message.peerId)) this.present.set(message.peerId, message.name);
  }

  /**
   * Connect to a peer. With `offer` we offer now; otherwise its offer makes
   * the connection. A link we already have is kept as it is: no renegotiation.
   */
  _onLink({ peerId, offer }) {
    this.linked.set(peerId, offer);
    this._unconfirmed.delete(peerId);
    this._unlinked.delete(peerId);
    const link = this.links.get(peerId);
    if (link !== undefined) {
      // The next replacement, if any, follows the server's roles.
      link.offerer = offer;
    } else if (offer) {
      this._openLink(peerId, this.present.get(peerId) ?? peerId, true);
    }
    const held = this._held.get(peerId)?.signals ?? [];
    this._dropHeld(peerId);
    for (const signal of held) this._accept(peerId, signal);
    this.emit("linkstatechange", { peerId, state: this.links.get(peerId)?.pc.connectionState ?? "new" });
  }

  /** Out of earshot: close at once (a tab may make only 500 connections), and do not retry. */
  _onUnlink({ peerId }) {
    this.linked.delete(peerId);
    this._unlinked.add(peerId);
    this._dropHeld(peerId);
    const link = this.links.get(peerId);
    if (link !== undefined) {
      this.links.delete(peerId);
      this._closeLink(link);
    }
    this.emit("linkstatechange", { peerId, state: "closed" });
  }

  _onSignal(message) {
    const peerId = message.from;
    const signal = decodeSignal(message.data);
    if (signal === null) {
      console.debug("dropping a malformed signal from %s", peerId);
    } else if (this.linked.has(peerId)) {
      this._accept(peerId, signal);
    } else if (this._unlinked.has(peerId)) {
      console.debug("dropping a late signal from unlinked %s", peerId);
    } else {
      this._hold(peerId, signal);
    }
  }

  /** Apply a signal from a linked peer, after its earlier ones; an offer may open the link. */
  _accept(peerId, signal) {
    let link = this.links.get(peerId);
    if (link === undefined) link = this._openLink(peerId, this.present.get(peerId) ?? peerId, false);
    link.signals = link.signals
      // A link closed meanwhile (unlinked, or the peer left) takes no more signals.
      .then(() => (this.links.get(peerId) === link ? this._apply(link, signal) : undefined))
      .catch((error) => console.info("bad signal from %s: %s", link.name, error));
  }

  _hold(peerId, signal) {
    let held = this._held.get(peerId);
    if (held === undefined) {
      const timer = setTimeout(() => {
        console.debug("dropping signals from %s: it was never linked to us", peerId);
        this._held.delete(peerId);
      }, HOLD_UNLINKED);
      held = { signals: [], timer };
      this._held.set(peerId, held);
    }
    held.signals.push(signal);
  }

  _dropHeld(peerId) {
    clearTimeout(this._held.get(peerId)?.timer);
    this._held.delete(peerId);
  }

  // --- links -------------------------------------------------------------------

  _newConnection() {
    // An explicit, possibly empty list: host candidates only unless the operator set some.
    return new RTCPeerConnection({ iceServers: this.signaling.iceServers, bundlePolicy: "max-bundle" });
  }

  _openLink(peerId, name, offerer) {
    const link = new Link(peerId, name, offerer, this._newConnection());
    this.links.set(peerId, link);
    this._wire(link);
    if (offerer) this._offer(link).catch((error) => this._failed(link, error));
    return link;
  }

  /** Connect a link's connection to our events, and start its watchdog. */
  _wire(link) {
    const pc = link.pc;
    clearTimeout(link.watchdog);
    link.watchdog = setTimeout(() => {
      if (link.pc === pc && pc.connectionState !== "connected") {
        console.info("link to %s did not connect in time", link.name);
        this._replace(link);
      }
    }, this.rules.connectTimeout * 1000);
    pc.onicecandidate = ({ candidate }) => {
      // Trickle: each candidate as it is found, then null for the end.
      if (link.pc === pc) this.signaling.signal(link.peerId, candidate ? candidate.toJSON() : null);
    };
    pc.onconnectionstatechange = () => {
      if (link.pc !== pc || this._closing) return;
      this.emit("linkstatechange", { peerId: link.peerId, state: pc.connectionState });
      if (pc.connectionState === "failed") {
        this.emit("peerdisconnected", link.peerId);
        this._replace(link);
      }
    };
    pc.ontrack = ({ track, streams }) => {
      if (track.kind !== "audio" || link.pc !== pc) return;
      link.stream = streams[0] ?? new MediaStream([track]);
      this.emit("track", { peerId: link.peerId, stream: link.stream });
    };
    this.emit("linkstatechange", { peerId: link.peerId, state: pc.connectionState });
  }

  /**
   * Our audio section: always send-and-receive, so that a microphone that
   * arrives later needs no renegotiation (replaceTrack), and the offerer's
   * audio section comes before the channels (aiortc bundles only that way).
   */
  _audioTransceiver(link) {
    const transceiver = audioTransceiverOf(link.pc);
    if (transceiver !== undefined) {
      transceiver.direction = "sendrecv";
      return transceiver;
    }
    return link.pc.addTransceiver("audio", { direction: "sendrecv" });
  }

  _attachTrack(link) {
    const transceiver = audioTransceiverOf(link.pc);
    if (transceiver === undefined) return;
    transceiver.sender.replaceTrack(this._track).catch(() => {});
    this._limitBitrate(link);
  }

  /** A voice needs `audioBitrate`, not the browser's default; set once negotiated. */
  _limitBitrate(link) {
    const sender = audioTransceiverOf(link.pc)?.sender;
    const parameters = sender?.getParameters();
    if (!parameters?.encodings?.length) return;
    parameters.encodings[0].maxBitrate = this.rules.audioBitrate;
    sender.setParameters(parameters).catch(() => {});
  }

  /** Make the two negotiated channels and connect them to our events. */
  _openChannels(link) {
    const { chat: chatSpec, state: stateSpec } = this.rules;
    const chat = (link.chat = link.pc.createDataChannel(chatSpec.label, channelOptions(chatSpec)));
    const state = (link.state = link.pc.createDataChannel(stateSpec.label, channelOptions(stateSpec)));
    chat.onopen = () => {
      // Only now is the link of use: "connected" comes before the channels open.
      link.failures = 0;
      this.emit("peerconnected", link.peerId);
    };
    state.onopen = () => {
      if (this._position !== null) this._sendState(link, JSON.stringify(this._position));
    };
    chat.onmessage = ({ data }) => {
      const message = decodeChat(data, this.rules);
      if (message !== null) this.emit("chat", { peerId: link.peerId, message });
    };
    state.onmessage = ({ data }) => {
      const position = decodePosition(data, this.rules);
      if (position === null) return;
      // Unordered channel: a late, older update must not move anyone back.
      if (link.position === null || position.seq > link.position.seq) {
        link.position = position;
        this.emit("position", { peerId: link.peerId, position });
      }
    };
  }

  async _offer(link) {
    const pc = link.pc;
    this._audioTransceiver(link);
    this._attachTrack(link);
    this._openChannels(link);
    const offer = await pc.createOffer();
    await pc.setLocalDescription({ type: "offer", sdp: withOpusParameters(offer.sdp, DTX) });
    if (link.pc === pc) this.signaling.signal(link.peerId, pc.localDescription.toJSON());
  }

  /** Apply one decoded signal (protocol.js, decodeSignal). */
  async _apply(link, { description, candidate = null }) {
    if (description !== undefined) {
      if (description.type === "offer") {
        await this._answer(link, description);
      } else if (link.pc.signalingState === "have-local-offer") {
        await link.pc.setRemoteDescription(description);
        await this._flushCandidates(link);
        this._limitBitrate(link);
      }
      return;
    }
    if (link.pc.remoteDescription === null) {
      link.pendingCandidates.push(candidate);
    } else {
      await addCandidate(link.pc, candidate);
    }
  }

  async _flushCandidates(link) {
    const pending = link.pendingCandidates;
    link.pendingCandidates = [];
    for (const candidate of pending) await addCandidate(link.pc, candidate);
  }

  /** Answer an offer; an offer always starts the link afresh. */
  async _answer(link, offer) {
    if (link.pc.signalingState !== "stable" || link.pc.remoteDescription !== null) this._reset(link);
    const pc = link.pc;
    await pc.setRemoteDescription(offer);
    await this._flushCandidates(link);
    this._audioTransceiver(link);
    this._attachTrack(link);
    this._openChannels(link);
    const answer = await pc.createAnswer();
    await pc.setLocalDescription({ type: "answer", sdp: withOpusParameters(answer.sdp, DTX) });
    this._limitBitrate(link);
    if (link.pc === pc) this.signaling.signal(link.peerId, pc.localDescription.toJSON());
  }

  /** Give a link a fresh connection and channels. */
  _reset(link) {
    const old = link.pc;
    link.pc = this._newConnection();
    link.chat = link.state = link.stream = null;
    link.pendingCandidates = [];
    this._wire(link);
    old.close();
  }

  _failed(link, error) {
    console.info("link to %s failed: %s", link.name, error);
    this._replace(link);
  }

  /** Start a failed link again after a backoff; the offerer makes the new offer. */
  async _replace(link) {
    if (this.links.get(link.peerId) !== link) return;
    if (!this.present.has(link.peerId) || !this.linked.has(link.peerId)) {
      this.links.delete(link.peerId);
      this._closeLink(link);
      return;
    }
    link.failures += 1;
    const { retryMin, retryMax } = this.rules;
    const delay = 1000 * Math.min(retryMin * 2 ** (link.failures - 1), retryMax);
    await new Promise((resolve) => setTimeout(resolve, delay * (0.5 + Math.random())));
    if (this.links.get(link.peerId) !== link || this._closing) return;
    this._reset(link);
    if (link.offerer) this._offer(link).catch((error) => this._failed(link, error));
  }

  _closeLink(link) {
    clearTimeout(link.watchdog);
    link.pc.close();
    this.emit("peerdisconnected", link.peerId);
  }
}

function audioTransceiverOf(pc) {
  return pc.getTransceivers().find((t) => t.receiver.track.kind === "audio");
}

function channelOptions(spec) {
  const options = { negotiated: true, id: spec.id, ordered: spec.ordered };
  if (spec.maxRetransmits !== null) options.maxRetransmits = spec.maxRetransmits;
  return options;
}

async function addCandidate(pc, candidate) {
  // null is the end of candidates.
  await pc.addIceCandidate(candidate ?? undefined);
}
