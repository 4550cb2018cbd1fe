// The echo-cancelling loopback. Chrome's echo canceller hears only what WebRTC
// itself plays, not what Web Audio plays (Chromium bug 687574), so the page's
// spatial mix goes out through one local RTCPeerConnection into a second, and
// plays from an <audio> element, as Hubs does. It never leaves the machine and
// is no part of the mesh. Speakers decides where the mix plays: through a
// Loopback, or directly when there is none.

import { Emitter } from "./events.js";
import { withOpusParameters } from "./sdp.js";

/** The mix of every voice, in stereo: far above one voice's 32 kbit/s. */
export const LOOPBACK_BITRATE = 128000;
/** Stereo both ways, and no DTX: the mix is played, never silent on the wire. */
const MIX_OPUS = { stereo: 1, "sprop-stereo": 1, maxaveragebitrate: LOOPBACK_BITRATE, usedtx: 0 };
/** How long building it may take before this try counts as failed (ms). */
const START_TIMEOUT = 5000;
/**
 * How often the far end's bytes are checked (ms). Without DTX they rise 50
 * times a second, so a loopback that stops carrying is noticed within two
 * checks, whatever stopped it: close() fires no state change, for one.
 */
const WATCH_INTERVAL = 500;
const DOWN = ["disconnected", "failed", "closed"];

/**
 * Whether this browser needs the loopback: Chrome, Chromium and Edge on the
 * desktop. Firefox and Safari cancel echo of Web Audio as they are. The page's
 * address may force it off with `?loopback=off` (for tests, and to compare).
 */
export function loopbackWanted(location = window.location, agent = navigator.userAgentData) {
  if (new URLSearchParams(location.search).get("loopback") === "off") return false;
  const chromium = agent?.brands?.some(({ brand }) => brand === "Chromium") ?? false;
  return chromium && !agent.mobile;
}

/**
 * One loopback carrying `track` (the mix) to `element`, which starts muted.
 * `start()` resolves once audio arrives at the far end, or rejects. From its
 * last steps on, "down" is emitted once if either connection fails or drops,
 * or the audio stops arriving: a listener must be there before `start()`.
 */
export class Loopback extends Emitter {
  constructor(track) {
    super();
    this.track = track;
    // An explicit empty list: host candidates on this machine, never a public STUN server.
    this.sending = new RTCPeerConnection({ iceServers: [] });
    this.receiving = new RTCPeerConnection({ iceServers: [] });
    this.element = new Audio();
    this.element.muted = true;
    this._down = false;
    this._watch = null;
    /** Candidates for an end whose remote description is not set yet. */
    this._early = new Map([[this.sending, []], [this.receiving, []]]);
  }

  async start() {
    const { sending, receiving } = this;
    sending.onicecandidate = ({ candidate }) => this._pass(receiving, candidate);
    receiving.onicecandidate = ({ candidate }) => this._pass(sending, candidate);
    const arrived = new Promise((resolve) => {
      receiving.ontrack = ({ track }) => resolve(track);
    });
    const { sender } = sending.addTransceiver(this.track, { direction: "sendonly" });
    const offer = await sending.createOffer();
    await sending.setLocalDescription({ type: "offer", sdp: withOpusParameters(offer.sdp, MIX_OPUS) });
    await receiving.setRemoteDescription(sending.localDescription);
    this._flush(receiving);
    const answer = await receiving.createAnswer();
    await receiving.setLocalDescription({ type: "answer", sdp: withOpusParameters(answer.sdp, MIX_OPUS) });
    await sending.setRemoteDescription(receiving.localDescription);
    this._flush(sending);
    const parameters = sender.getParameters();
    parameters.encodings[0].maxBitrate = LOOPBACK_BITRATE;
    await sender.setParameters(parameters);
    this.element.srcObject = new MediaStream([await arrived]);
    await this._carrying();
    await this.element.play();
    for (const pc of [sending, receiving]) {
      pc.onconnectionstatechange = () => {
        if (DOWN.includes(pc.connectionState)) this._fell(`the loopback is ${pc.connectionState}`);
      };
    }
    // Either may have dropped between the last check and the handlers above.
    if (!this._up()) throw new Error("the loopback dropped as it started");
    this._watchBytes(await this.bytesReceived());
  }

  /** Whether it fell or was closed: it carries nothing any more. */
  get down() {
    return this._down;
  }

  /** Audio bytes received so far at the far end. */
  async bytesReceived() {
    let bytes = 0;
    (await this.receiving.getStats()).forEach((report) => {
      if (report.type === "inbound-rtp" && report.kind === "audio") bytes += report.bytesReceived ?? 0;
    });
    return bytes;
  }

  close() {
    this._down = true;
    clearTimeout(this._watch);
    this.sending.close();
    this.receiving.close();
    this.element.pause();
    this.element.srcObject = null;
  }

  _up() {
    return this.sending.connectionState === "connected" && this.receiving.connectionState === "connected";
  }

  /** Resolves once both ends are connected and audio arrives; rejects after START_TIMEOUT. */
  async _carrying() {
    const deadline = performance.now() + START_TIMEOUT;
    while (!(this._up() && (await this.bytesReceived()) > 0)) {
      if (this._down) throw new Error("closed while starting");
      if (performance.now() > deadline) {
        const states = `${this.sending.connectionState}/${this.receiving.connectionState}`;
        throw new Error(`no audio through the loopback within ${START_TIMEOUT} ms (${states})`);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  /** Fall as soon as the far end's bytes stop rising. */
  _watchBytes(before) {
    this._watch = setTimeout(async () => {
      const now = await this.bytesReceived().catch(() => before);
      if (this._down) return;
      if (now > before) this._watchBytes(now);
      else this._fell("the loopback stopped carrying audio");
    }, WATCH_INTERVAL);
  }

  /** Hand a candidate to the other end (null is the end of them), or keep it for later. */
  _pass(pc, candidate) {
    if (pc.remoteDescription === null) this._early.get(pc).push(candidate);
    else if (pc.signalingState !== "closed") pc.addIceCandidate(candidate ?? undefined).catch(() => {});
  }

  _flush(pc) {
    for (const candidate of this._early.get(pc).splice(0)) this._pass(pc, candidate);
  }

  _fell(why) {
    if (this._down) return;
    this._down = true;
    this.emit("down", why);
  }
}

/**
 * Waits before building the loopback again (ms): after it fell, the first;
 * after builds that failed in a row, one each, and none after the last.
 */
const RETRIES = [1000, 2000, 4000, 8000];
/**
 * At most this many loopbacks in one visit: each is two RTCPeerConnections,
 * and Chrome allows a tab 500 in its lifetime, the mesh's included.
 */
const MAX_BUILDS = 20;

/**
 * Where the page's `mix` (a node of `context`) plays, and on which speakers.
 * With `wanted`, through a Loopback; until that is up, and whenever it falls,
 * directly from the AudioContext, at once, while it is built again (RETRIES,
 * up to MAX_BUILDS in all). Without, directly.
 *
 * Events: `outputchange` ("loopback" or "direct").
 */
export class Speakers extends Emitter {
  constructor(context, mix, wanted) {
    super();
    this.context = context;
    this.mix = mix;
    mix.connect(context.destination);
    /** The loopback in use, or null. */
    this.loopback = null;
    /** Whether the first loopback is still being built (nothing to say about echo yet). */
    this.pending = wanted;
    /** Loopbacks tried so far, and whether the page stopped trying (it plays directly). */
    this.builds = 0;
    this.gaveUp = false;
    this._failedInARow = 0;
    this._rebuild = null;
    this._closed = false;
    /** The chosen speakers' deviceId; "" is the system's default. */
    this._sink = "";
    if (wanted) {
      this._feed = context.createMediaStreamDestination();
      mix.connect(this._feed);
      this._build();
    }
  }

  /** Where the mix plays: "loopback", or "direct" from the AudioContext. */
  get output() {
    return this.loopback === null ? "direct" : "loopback";
  }

  /**
   * Play on the speakers with `deviceId` ("" for the system's default), where
   * the browser lets a page choose; resolves to whether it could.
   */
  async setSink(deviceId) {
    this._sink = deviceId;
    const outputs = [this.context, this.loopback?.element].filter((o) => o?.setSinkId !== undefined);
    const results = await Promise.allSettled(outputs.map((output) => output.setSinkId(deviceId)));
    const refused = results.find((result) => result.status === "rejected");
    if (refused === undefined) return outputs.length > 0;
    console.info("the speakers could not be chosen: %s", refused.reason);
    return false;
  }

  close() {
    this._closed = true;
    clearTimeout(this._rebuild);
    this.loopback?.close();
  }

  async _build() {
    this.builds += 1;
    let loopback = null;
    try {
      loopback = new Loopback(this._feed.stream.getAudioTracks()[0]);
      // Ignored until it is in use (this.loopback), so it may fall while starting.
      loopback.on("down", (why) => this._fell(loopback, why));
      await loopback.start();
      if (this._sink) {
        await loopback.element.setSinkId?.(this._sink).catch((error) => {
          console.info("the speakers could not be chosen: %s", error);
        });
      }
      if (loopback.down) throw new Error("it fell as it started");
    } catch (error) {
      loopback?.close();
      if (this._closed) return;
      console.info("the echo-cancelling loopback could not be built: %s", error);
      this._failedInARow += 1;
      this._again(RETRIES[this._failedInARow - 1]);
      return;
    }
    if (this._closed) {
      loopback.close();
      return;
    }
    this._failedInARow = 0;
    this.loopback = loopback;
    // Heard through the loopback first, then no longer directly: a moment of both, no gap.
    loopback.element.muted = false;
    this.mix.disconnect(this.context.destination);
    this._changed();
  }

  _fell(loopback, why) {
    if (this.loopback !== loopback || this._closed) return;
    console.info("the echo-cancelling loopback fell (%s): playing directly", why);
    // Directly first, then the loopback goes: no silence in between.
    this.mix.connect(this.context.destination);
    this.loopback = null;
    loopback.close();
    this._changed();
    this._again(RETRIES[0]);
  }

  /** Build the loopback again after `wait` ms; undefined, or too many built: no more. */
  _again(wait) {
    if (this.pending) this._changed();
    if (wait === undefined || this.builds >= MAX_BUILDS) {
      this.gaveUp = true;
      console.info("no more tries at the echo-cancelling loopback after %d: playing directly", this.builds);
      return;
    }
    this._rebuild = setTimeout(() => this._build(), wait);
  }

  _changed() {
    this.pending = false;
    this.emit("outputchange", this.output);
  }
}
