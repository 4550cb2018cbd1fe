// Your microphone: opening it (or saying plainly why not), its level meter,
// and the lobby's check that it works before you walk in.

import { MicrophoneMeter } from "./audio.js";

/** The meters: this level (dBFS) and below reads empty, 0 dBFS full. */
const METER_FLOOR_DBFS = -60;
/** How far a meter may fall per update (of 0 to 1). */
const METER_FALL = 0.25;
/** How often the lobby's meter moves (ms). */
const CHECK_INTERVAL = 100;

/** Show `dbfs` on `meter`: it rises at once, and falls back gently, since speech comes in bursts. */
export function showLevel(meter, dbfs) {
  const level = Math.min(1, Math.max(0, 1 - dbfs / METER_FLOOR_DBFS));
  meter.value = Math.max(level, meter.value - METER_FALL);
}

/**
 * The microphone with `deviceId` ("" for the system's default), or why there
 * is none: {track} or {problem: words}. Echo cancellation, noise suppression
 * and gain control are asked for by name, not left to the browser's defaults.
 */
export async function openMicrophone(deviceId = "") {
  if (!window.isSecureContext || navigator.mediaDevices?.getUserMedia === undefined) {
    return {
      problem:
        "Browsers allow the microphone only on https:// or on this computer. " +
        "You can listen and chat; ask the host to start the server with --self-signed to talk.",
    };
  }
  const audio = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
  if (deviceId) audio.deviceId = { exact: deviceId };
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio });
    return { track: stream.getAudioTracks()[0] };
  } catch (error) {
    // The chosen one is unplugged: any microphone is better than none.
    if (deviceId && ["OverconstrainedError", "NotFoundError"].includes(error.name)) return openMicrophone("");
    const why =
      error.name === "NotAllowedError"
        ? "The microphone is blocked. Allow it for this site (the icon in the address bar), then try again."
        : error.name === "NotFoundError"
          ? "No microphone was found."
          : `The microphone could not be opened (${error.message || error.name}).`;
    return { problem: `${why} You can still listen and chat.` };
  }
}

/**
 * The lobby's microphone check: the chosen microphone, opened on request,
 * with a level meter and the device's name. Never played back, and closed
 * on `stop()` (before joining, so that the room opens its own).
 */
export class MicrophoneCheck {
  constructor(devices, { button, meter, text }) {
    this.devices = devices;
    this.button = button;
    this.meter = meter;
    this.text = text;
    this.track = null;
    this._context = null;
    this._meter = null;
    this._timer = null;
    /** Bumped by each start and stop: an opening that was overtaken is dropped. */
    this._generation = 0;
    button.addEventListener("click", () => (this.running ? this.stop() : this.start()));
    devices.on("change", ({ kind }) => {
      if (kind === "audioinput" && this.running) this.start();
    });
  }

  get running() {
    return this.button.getAttribute("aria-pressed") === "true";
  }

  async start() {
    const generation = ++this._generation;
    this._render(true, "Opening the microphone…");
    // Made on the click: an AudioContext made without one stays suspended.
    this._context ??= new AudioContext();
    const { track, problem } = await openMicrophone(this.devices.use("audioinput"));
    if (generation !== this._generation) {
      track?.stop();
      return;
    }
    if (track === undefined) {
      this._close();
      this._render(false, problem);
      return;
    }
    this._close(false);
    this.track = track;
    this._meter = new MicrophoneMeter(this._context, track);
    this._timer = setInterval(() => showLevel(this.meter, this._meter.level()), CHECK_INTERVAL);
    track.addEventListener("ended", () => this.track === track && this.stop());
    this._render(true, `Say something: the meter moves if ${track.label || "your microphone"} hears you.`);
    // Now that the microphone is allowed, the browser names the devices.
    this.devices.refresh();
  }

  stop() {
    this._generation += 1;
    this._close();
    this._render(false, "");
  }

  /** Stop the microphone and the meter; `all`: the AudioContext too. */
  _close(all = true) {
    clearInterval(this._timer);
    this._meter?.stop();
    this._meter = null;
    this.track?.stop();
    this.track = null;
    this.meter.value = 0;
    if (all) {
      this._context?.close();
      this._context = null;
    }
  }

  _render(running, words) {
    this.button.setAttribute("aria-pressed", String(running));
    this.button.textContent = running ? "Stop the check" : "Check the microphone";
    this.text.textContent = words;
  }
}
