// Spatial audio: every remote voice placed around the listener with Web Audio,
// the browser's twin of SpatialMixer in chatsubo/peer/audio.py. Both use the
// distance model served at /api/space. The mix plays through the
// echo-cancelling loopback (loopback.js) where the browser needs it.

import { loopbackWanted, Speakers } from "./loopback.js";
import { distanceGain } from "./space.js";

/** Seconds for gains and positions to glide to a new value: never a jump. */
const GLIDE = 0.1;
/** Seconds over which a gain ramps to a new value; ramps, unlike setTargetAtTime, reach 0. */
const GAIN_RAMP = 0.25;
/** Below this level (dBFS) a voice counts as silent. */
const SPEAKING_DBFS = -50;
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
 * Every voice goes into one mix, which `speakers` plays: through the
 * echo-cancelling loopback where the browser needs it, else directly.
 */
export class SpatialAudio {
  constructor(distanceModel, { loopback = loopbackWanted() } = {}) {
    this.model = distanceModel;
    this.context = new AudioContext();
    this.mix = this.context.createGain();
    /** Where the mix plays (loopback.js). */
    this.speakers = new Speakers(this.context, this.mix, loopback);
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

  speaking(peerId) {
    return this.level(peerId) > SPEAKING_DBFS;
  }

  close() {
    this.speakers.close();
    this.setMicrophone(null);
    for (const peerId of [...this.voices.keys()]) this.remove(peerId);
    this.context.close();
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
