// The microphones and speakers to choose from, remembered between visits.

import { Emitter } from "./events.js";

const KEYS = { audioinput: "chatsubo.microphone", audiooutput: "chatsubo.speakers" };
const WORDS = { audioinput: "Microphone", audiooutput: "Speakers" };
/** The browser's stand-ins for "whatever the system uses": our own "" covers them. */
const STAND_INS = ["default", "communications", ""];

/** Whether the page can choose where the mix plays: AudioContext.setSinkId (Chrome 110 and later). */
export function canChooseSpeakers() {
  return typeof AudioContext !== "undefined" && "setSinkId" in AudioContext.prototype;
}

/**
 * The devices of each kind ("audioinput", "audiooutput"), the one chosen of
 * each, and every <select> that shows them. Follows `devicechange`.
 *
 * A choice is kept by deviceId and label: the id is stable for this site, and
 * the label finds the device again if the browser made new ids. "" is the
 * system's default. A chosen device that is unplugged is kept as the choice,
 * and used again when it comes back.
 *
 * Events: `change` ({kind, deviceId}) when the device to use changes.
 */
export class Devices extends Emitter {
  constructor(storage, media = navigator.mediaDevices) {
    super();
    this.storage = storage;
    this.media = media;
    /** What enumerateDevices said, by kind; null until it named them (it does once allowed). */
    this.lists = { audioinput: null, audiooutput: null };
    /** @type {{select: HTMLSelectElement, kind: string}[]} */
    this._selects = [];
    this._using = { audioinput: this.use("audioinput"), audiooutput: this.use("audiooutput") };
    media?.addEventListener?.("devicechange", () => this.refresh());
  }

  /** The stored choice for `kind`, {deviceId, label}, or null for the default. */
  chosen(kind) {
    try {
      const choice = JSON.parse(this.storage.getItem(KEYS[kind]) ?? "null");
      return typeof choice?.deviceId === "string" ? choice : null;
    } catch {
      return null;
    }
  }

  /** The deviceId to use for `kind` now: the chosen one where it is plugged in, else "". */
  use(kind) {
    const choice = this.chosen(kind);
    const list = this.lists[kind];
    if (choice === null) return "";
    // Not told yet what is plugged in: trust the stored id.
    if (list === null) return choice.deviceId;
    const found =
      list.find((device) => device.deviceId === choice.deviceId) ??
      list.find((device) => choice.label && device.label === choice.label);
    return found?.deviceId ?? "";
  }

  /** Choose `deviceId` ("" for the default) for `kind`, remember it, and show it. */
  choose(kind, deviceId) {
    const device = this.lists[kind]?.find((d) => d.deviceId === deviceId);
    if (deviceId === "") this.storage.removeItem(KEYS[kind]);
    else this.storage.setItem(KEYS[kind], JSON.stringify({ deviceId, label: device?.label ?? "" }));
    this._changed();
  }

  /** Show the devices of `kind` in `select`, and choose with it. */
  bind(select, kind) {
    this._selects.push({ select, kind });
    select.addEventListener("change", () => this.choose(kind, select.value));
    this._render();
  }

  /** Ask the browser what is plugged in: names come once the microphone was allowed. */
  async refresh() {
    if (this.media?.enumerateDevices === undefined) return;
    const all = await this.media.enumerateDevices();
    for (const kind of Object.keys(KEYS)) {
      const devices = all.filter((d) => d.kind === kind && !STAND_INS.includes(d.deviceId));
      // Before the microphone is allowed, browsers hide the devices (no ids, no labels).
      const named = devices.length > 0 && devices.every((d) => d.label !== "");
      this.lists[kind] = named ? devices : null;
    }
    this._changed();
  }

  _changed() {
    this._render();
    for (const kind of Object.keys(KEYS)) {
      const deviceId = this.use(kind);
      if (deviceId === this._using[kind]) continue;
      this._using[kind] = deviceId;
      this.emit("change", { kind, deviceId });
    }
  }

  _render() {
    for (const { select, kind } of this._selects) {
      const list = this.lists[kind] ?? [];
      const options = [new Option(`System default`, "")];
      list.forEach((device, i) => options.push(new Option(device.label || `${WORDS[kind]} ${i + 1}`, device.deviceId)));
      const using = this.use(kind);
      const choice = this.chosen(kind);
      if (using === "" && choice !== null && this.lists[kind] !== null) {
        // Chosen but unplugged: say so, and use the default meanwhile.
        options[0].textContent = `System default (${choice.label || "yours"} is not plugged in)`;
      } else if (using !== "" && !list.some((d) => d.deviceId === using)) {
        // Chosen on an earlier visit, not named yet.
        options.push(new Option(choice?.label || `Your ${WORDS[kind].toLowerCase()}`, using));
      }
      select.replaceChildren(...options);
      select.value = using;
    }
  }
}
