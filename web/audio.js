// Spatial audio: every remote voice placed around the listener with Web Audio,
// the browser's twin of SpatialMixer in chatsubo/peer/audio.py. Both use the
// distance model served at /api/space. The mix plays through the
// echo-cancelling loopback (loopback.js) where the browser needs it.

import { Emitter } from "./events.js";
import { Loopback, loopbackWanted } from "./loopback.js";
import { distanceGain } from "./space.js";

/** Seconds for gains and positions to glide to a new value: never a jump. */
const GLIDE = 0.1;
/** Seconds over which a gain ramps to a new value; ramps, unlike setTargetAtTime, reach 0. */
const GAIN_RAMP = 0.25;
/** Below this level (dBFS) a voice counts as silent. */
const SPEAKING_DBFS = -50;
/**
 * Waits before building the loopback again (ms): after it fell, the first;
 * after builds that failed in a row, one each, and none after the last.
 */
const LOOPBACK_RETRIES = [1000, 2000, 4000, 8000];
/**
 * At most this many loopbacks in one visit: each is two RTCPeerConnections,
 * and Chrome allows a tab 500 in its lifetime, the mesh's included.
 */
const LOOPBACK_BUILDS = 20;

/**
 * The RMS level of what `analyser` hears right now, in dBFS (-Infinity for
 * silence): of the loudest `block` samples in its window, or of all of it.
 */
function rmsDbfs(analyser, samples, block = samples.length) {
  analyser.getFloatTimeDomainData(samples);
  let loudest = 0;
  for (let start = 0; start + block <= samples.length; start += block) {
    let sum = 0;
    for (let i = start; i < start + block; i++) sum += samples[i] * samples[i];
    loudest = Math.max(loudest, sum / block);
  }
  return 10 * Math.log10(loudest);
}

/** Our own meter reads the loudest 1024 samples (about 20 ms) of this many (about 340 ms). */
const MIC_WINDOW = 16384;
const MIC_BLOCK = 1024;

/**
 * The level of one microphone track in `context`: an analyser only, never
 * played, so nobody hears themselves. A disabled track (muted, or
 * push-to-talk with the key up) reads silent, which is what the others hear.
 */
export class MicrophoneMeter {
  constructor(context, track) {
    this.track = track;
    this.source = context.createMediaStreamSource(new MediaStream([track]));
    this.analyser = context.createAnalyser();
    // Longer than the page's meter interval, so that no short sound slips between reads.
    this.analyser.fftSize = MIC_WINDOW;
    this.samples = new Float32Array(this.analyser.fftSize);
    this.source.connect(this.analyser);
  }

  /** How loud the microphone is right now, in dBFS (-Infinity for silence). */
  level() {
    return rmsDbfs(this.analyser, this.samples, MIC_BLOCK);
  }

  stop() {
    this.source.disconnect();
  }
}

/** One remote voice: muted <audio> (the Chrome workaround), gain, panner, level meter. */
class Voice {
  /** `stream` played in `context`, into `output` (the mix). */
  constructor(context, stream, output) {
    // Chrome feeds Web Audio silence from a remote stream unless a media
    // element also plays it (Chromium bugs 933677, 121673).
    this.element = new Audio();
    this.element.muted = true;
    this.element.srcObject = stream;
    this.element.play().catch(() => {});
    this.source = context.createMediaStreamSource(stream);
    this.analyser = context.createAnalyser();
    this.analyser.fftSize = 512;
    this.samples = new Float32Array(this.analyser.fftSize);
    this.gain = context.createGain();
    // New voices fade in from silence.
    this.gain.gain.value = 0;
    // Direction only: the distance gain is ours (distanceGain), because an
    // inverse PannerNode never falls to zero. With no roll-off it keeps 1.
    this.panner = new PannerNode(context, { panningModel: "HRTF", rolloffFactor: 0 });
    this.source.connect(this.analyser);
    this.source.connect(this.gain).connect(this.panner).connect(output);
    this.volume = 1;
    /** Where the peer stands; null until it says so, and silent until then. */
    this.position = null;
  }

  stop() {
    this.source.disconnect();
    this.panner.disconnect();
    this.element.srcObject = null;
  }
}

/**
 * Places remote voices on the map around the listener (your avatar).
 *
 * Map meters become Web Audio coordinates as x -> x and y -> z: the
 * listener faces up the map (toward smaller y), so a voice to the east is
 * heard on the right, as in the Python mixer.
 *
 * Every voice goes into one mix. Where the browser needs it (loopbackWanted),
 * the mix plays through the echo-cancelling Loopback; until that is up, and
 * whenever it falls, the mix plays directly from the AudioContext at once, and
 * the loopback is built again (LOOPBACK_RETRIES, up to LOOPBACK_BUILDS).
 *
 * Events: `outputchange` ("loopback" or "direct").
 */
export class SpatialAudio extends Emitter {
  constructor(distanceModel, { loopback = loopbackWanted() } = {}) {
    super();
    this.model = distanceModel;
    this.context = new AudioContext();
    this.mix = this.context.createGain();
    this.mix.connect(this.context.destination);
    /** Where the mix plays: "direct" from the AudioContext, or through the "loopback". */
    this.output = "direct";
    /** The loopback in use, or null. */
    this.loopback = null;
    /** Whether the first loopback is still being built (say nothing about echo yet). */
    this.loopbackPending = loopback;
    /** Loopbacks tried so far, and whether the page stopped trying (it plays directly). */
    this.loopbackBuilds = 0;
    this.loopbackGaveUp = false;
    this._failedInARow = 0;
    this._rebuild = null;
    this._closed = false;
    /** The chosen speakers' deviceId; "" is the system's default. */
    this._sink = "";
    /** @type {Map<string, Voice>} */
    this.voices = new Map();
    /** Volumes set by the user, kept when a voice is replaced by a new stream. */
    this.volumes = new Map();
    /** Our own microphone's meter, or null. */
    this._mic = null;
    this.listener = [0, 0];
    const l = this.context.listener;
    l.forwardX.value = 0;
    l.forwardY.value = 0;
    l.forwardZ.value = -1;
    l.upX.value = 0;
    l.upY.value = 1;
    l.upZ.value = 0;
    if (loopback) {
      this._feed = this.context.createMediaStreamDestination();
      this.mix.connect(this._feed);
      this._buildLoopback();
    }
  }

  /** Start playing: browsers keep an AudioContext suspended until a user gesture. */
  resume() {
    return this.context.resume();
  }

  /**
   * Play `peerId`'s stream from `position` ([x, y] in meters). Unknown (null),
   * the voice stays silent until `move`: a voice from across the bar must not
   * blare while its first position is on its way.
   */
  add(peerId, stream, position = null) {
    this.remove(peerId);
    const voice = new Voice(this.context, stream, this.mix);
    this.voices.set(peerId, voice);
    voice.position = position;
    voice.volume = this.volumes.get(peerId) ?? 1;
    this._place(voice);
  }

  /** Stop playing `peerId`; `forget` also drops their volume setting (they left). */
  remove(peerId, forget = false) {
    this.voices.get(peerId)?.stop();
    this.voices.delete(peerId);
    if (forget) this.volumes.delete(peerId);
  }

  /** Where peer `peerId` stands, in map meters. */
  move(peerId, x, y) {
    const voice = this.voices.get(peerId);
    if (voice === undefined) return;
    voice.position = [x, y];
    this._place(voice);
  }

  /** Where we stand, in map meters. */
  setListener(x, y) {
    this.listener = [x, y];
    const l = this.context.listener;
    const now = this.context.currentTime;
    l.positionX.setTargetAtTime(x, now, GLIDE);
    l.positionZ.setTargetAtTime(y, now, GLIDE);
    for (const voice of this.voices.values()) this._setGain(voice);
  }

  /** Our own volume for one person, 0 to 1 (multiplies the distance gain). */
  setVolume(peerId, volume) {
    this.volumes.set(peerId, volume);
    const voice = this.voices.get(peerId);
    if (voice === undefined) return;
    voice.volume = volume;
    this._setGain(voice);
  }

  /** How loud `peerId` is right now, in dBFS (-Infinity for silence). */
  level(peerId) {
    const voice = this.voices.get(peerId);
    return voice === undefined ? -Infinity : rmsDbfs(voice.analyser, voice.samples);
  }

  /**
   * Meter our own microphone `track` (or none): an analyser only, never
   * played, so nobody hears themselves. A disabled track (muted, or push-to-talk
   * with the key up) reads silent, which is what the others hear.
   */
  setMicrophone(track) {
    this._mic?.stop();
    this._mic = track == null ? null : new MicrophoneMeter(this.context, track);
  }

  /** The microphone track being metered, or null. */
  get microphone() {
    return this._mic?.track ?? null;
  }

  /** How loud our own microphone is right now, in dBFS (-Infinity for silence or none). */
  microphoneLevel() {
    return this._mic?.level() ?? -Infinity;
  }

  /**
   * Play through the speakers with `deviceId` ("" for the system's default),
   * where the browser lets a page choose; resolves to whether it could.
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

  speaking(peerId) {
    return this.level(peerId) > SPEAKING_DBFS;
  }

  close() {
    this._closed = true;
    clearTimeout(this._rebuild);
    this.loopback?.close();
    this.setMicrophone(null);
    for (const peerId of [...this.voices.keys()]) this.remove(peerId);
    this.context.close();
  }

  // --- the echo-cancelling loopback -----------------------------------------------

  async _buildLoopback() {
    this.loopbackBuilds += 1;
    let loopback = null;
    try {
      loopback = new Loopback(this._feed.stream.getAudioTracks()[0]);
      // Ignored until it is in use (this.loopback), so it may fall while starting.
      loopback.on("down", (why) => this._loopbackFell(loopback, why));
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
      this._again(LOOPBACK_RETRIES[this._failedInARow - 1]);
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
    this._setOutput("loopback");
  }

  _loopbackFell(loopback, why) {
    if (this.loopback !== loopback || this._closed) return;
    console.info("the echo-cancelling loopback fell (%s): playing directly", why);
    // Directly first, then the loopback goes: no silence in between.
    this.mix.connect(this.context.destination);
    this.loopback = null;
    loopback.close();
    this._setOutput("direct");
    this._again(LOOPBACK_RETRIES[0]);
  }

  /** Build the loopback again after `wait` ms; undefined, or too many built: no more. */
  _again(wait) {
    if (this.loopbackPending) this._setOutput("direct");
    if (wait === undefined || this.loopbackBuilds >= LOOPBACK_BUILDS) {
      this.loopbackGaveUp = true;
      console.info("no more tries at the echo-cancelling loopback after %d: playing directly", this.loopbackBuilds);
      return;
    }
    this._rebuild = setTimeout(() => this._buildLoopback(), wait);
  }

  _setOutput(output) {
    this.output = output;
    this.loopbackPending = false;
    this.emit("outputchange", output);
  }

  _place(voice) {
    if (voice.position === null) return;
    const [x, y] = voice.position;
    const now = this.context.currentTime;
    voice.panner.positionX.setTargetAtTime(x, now, GLIDE);
    voice.panner.positionZ.setTargetAtTime(y, now, GLIDE);
    this._setGain(voice);
  }

  /** The shared distance model times our own volume, ramped from wherever the gain is now. */
  _setGain(voice) {
    if (voice.position === null) return;
    const [x, y] = voice.position;
    const distance = Math.hypot(x - this.listener[0], y - this.listener[1]);
    const gain = voice.gain.gain;
    const now = this.context.currentTime;
    gain.cancelAndHoldAtTime(now);
    gain.linearRampToValueAtTime(distanceGain(this.model, distance) * voice.volume, now + GAIN_RAMP);
  }
}
