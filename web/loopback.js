// The echo-cancelling loopback. Chrome's echo canceller hears only what WebRTC
// itself plays, not what Web Audio plays (Chromium bug 687574), so the page's
// spatial mix goes out through one local RTCPeerConnection into a second, and
// plays from an <audio> element, as Hubs does. It never leaves the machine and
// is no part of the mesh.

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
