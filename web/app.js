// The page: the lobby, the room, and the wiring between the modules.
// Everything other people typed is inserted with textContent, never as HTML.

import { SpatialAudio } from "./audio.js";
import { canChooseSpeakers, Devices } from "./devices.js";
import { forgetFragment, inviteClaims, Invites, readInviteLink } from "./invite.js";
import { BarMap } from "./map.js";
import { MeshPeer } from "./mesh.js";
import { MicrophoneCheck, openMicrophone, showLevel } from "./microphone.js";
import { loadProtocol } from "./protocol.js";
import { describeQuality, LinkQuality, UNMEASURED } from "./quality.js";
import { SignalingClient } from "./signaling.js";
import { freeSpot, isFree, loadSpace, zoneAt } from "./space.js";

const NAME_KEY = "chatsubo.name";
const PUSH_TO_TALK_KEY = "chatsubo.pushToTalk";
/** How long a voice counts as speaking after it was last heard (ms). */
const SPEAKING_HOLD = 1000;
/** How long to wait for a newcomer's zone before announcing them without it (ms). */
const ZONE_WAIT = 2000;
/**
 * Peer-to-peer positions heard this recently (ms) win over the server's
 * batches, which are older: a linked peer glides on its own updates.
 */
const P2P_FRESH = 1500;
/** Far avatars glide to each batch of positions over about its interval (ms). */
const FAR_GLIDE = 500;
const MAX_NOTICES = 6;
const MAX_CHAT_LINES = 200;

const $ = (id) => document.getElementById(id);

/** A new element with `text` as its text content. */
function make(tag, text = "", className = "") {
  const node = document.createElement(tag);
  if (text) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** What went wrong with a join, in plain words; `rules` are the protocol's client rules. */
function joinErrorText(error, roomId, rules) {
  switch (error.code) {
    case "room_full":
      return `${roomId} is full right now. Try again in a moment, or pick another room.`;
    case "unreachable":
      return "Can't reach the Chatsubo server. Check that it is running and that you are online.";
    case "rate_limited":
      return "Too many tries at once. Wait a moment, then try again.";
    case "unauthorized": {
      // The server's words say which door and why; say what to do about it.
      const words = error.message.charAt(0).toUpperCase() + error.message.slice(1);
      return error.message.includes("invite does not open")
        ? `${words}. Ask the bar's host for a new invite link.`
        : `${words}.`;
    }
    case "bad_message":
      if (error.message.includes("$.roomId")) {
        return `Room names are 1 to ${rules.roomIdMaxChars} letters, digits, dots, dashes or underscores, with no spaces.`;
      }
      if (error.message.includes("$.name")) {
        return `Your name must be 1 to ${rules.nameMaxChars} characters, with no control characters.`;
      }
      return `The server did not understand: ${error.message}`;
    default:
      return error.message || "Something went wrong.";
  }
}

/** Show a problem at the lobby's door, in plain words. */
function showError(code, text) {
  const box = $("lobby-error");
  box.dataset.code = code;
  $("lobby-error-text").textContent = text;
  box.hidden = false;
}

/** Whether keys pressed on `target` are typing: text fields, not buttons or checkboxes. */
function isTyping(target) {
  if (!(target instanceof Element)) return false;
  if (target.isContentEditable || target.closest("textarea, select") !== null) return true;
  const NOT_TEXT = ["button", "checkbox", "radio", "range", "submit", "reset", "color", "file"];
  return target instanceof HTMLInputElement && !NOT_TEXT.includes(target.type);
}

/** The lobby: the live room list and the door. */
class Lobby {
  constructor(signaling, devices, enter) {
    this.signaling = signaling;
    this.enter = enter;
    this.micCheck = new MicrophoneCheck(devices, {
      button: $("mic-check"),
      meter: $("lobby-mic-level"),
      text: $("mic-check-text"),
    });
    this.invites = new Invites(localStorage);
    this.lastAttempt = null;
    this.busy = false;
    /** Connected, with a room list fresh since: only then can anyone join. */
    this.online = false;
    this.name = $("name");
    this.room = $("room-field");
    this.name.maxLength = signaling.rules.nameMaxChars;
    this.room.maxLength = signaling.rules.roomIdMaxChars;
    this.name.value = localStorage.getItem(NAME_KEY) ?? `Guest ${Math.floor(100 + Math.random() * 900)}`;
    this.name.addEventListener("change", () => localStorage.setItem(NAME_KEY, this.name.value.trim()));
    this.room.value = signaling.rules.defaultRoom;
    this._openLink();
    this.room.addEventListener("input", () => this._renderFixedName());
    $("join-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.join(this.room.value.trim());
    });
    $("create").addEventListener("click", () => {
      this.room.value = `room-${Math.random().toString(36).slice(2, 7)}`;
      this.join(this.room.value);
    });
    $("retry").addEventListener("click", () => {
      this.signaling.retry();
      if (this.lastAttempt !== null) this.join(this.lastAttempt);
      else this.hideError();
    });
    signaling.on("rooms", (message) => this.renderRooms(message.rooms));
    signaling.on("connectionstatechange", (state) => this.renderStatus(state));
    // A first connection that keeps failing stays "connecting": say so once it has failed.
    signaling.on("retrying", () => this.renderStatus("reconnecting"));
  }

  /**
   * A deep link (`/?room=NAME`) fills in the room; an invite link also holds
   * the invite, which is kept for that room and taken out of the address bar.
   */
  _openLink() {
    const link = readInviteLink(window.location);
    if (link.token !== null) {
      const room = this.invites.keep(link.token, link.room);
      forgetFragment(window.history, window.location);
      if (link.room === null && room !== "*") this.room.value = room;
    }
    if (link.room !== null) this.room.value = link.room;
    this._renderFixedName();
  }

  _roomId() {
    return this.room.value.trim() || this.signaling.rules.defaultRoom;
  }

  /** An invite that fixes the name shows it, and the name can't be changed. */
  _renderFixedName() {
    const token = this.invites.forRoom(this._roomId());
    const fixed = token === null ? null : inviteClaims(token)?.name;
    this.name.readOnly = Boolean(fixed);
    if (fixed) this.name.value = fixed;
  }

  show() {
    $("lobby").hidden = false;
    this.setBusy(false);
    this.signaling.watchRooms(this.invites.forRoom(this._roomId()));
    this.renderStatus(this.signaling.connectionState);
  }

  async join(roomId) {
    const name = this.name.value.trim();
    if (!this.name.readOnly) localStorage.setItem(NAME_KEY, name);
    this.lastAttempt = roomId;
    this.hideError();
    this.setBusy(true);
    // The room opens the microphone for itself.
    this.micCheck.stop();
    const target = roomId || this.signaling.rules.defaultRoom;
    try {
      await this.enter(target, name, this.invites.forRoom(target));
      this.lastAttempt = null;
      this.signaling.unwatchRooms();
      $("lobby").hidden = true;
    } catch (error) {
      if (error.code === "unauthorized") this.invites.forget(target);
      showError(error.code ?? "error", joinErrorText(error, target, this.signaling.rules));
    } finally {
      this.setBusy(false);
    }
  }

  setBusy(busy) {
    this.busy = busy;
    $("join").textContent = busy ? "Joining…" : "Join";
    this._renderDoors();
  }

  /** Joining needs the server, and one join at a time; a full room takes nobody. */
  _renderDoors() {
    const shut = this.busy || !this.online;
    $("join").disabled = shut;
    $("create").disabled = shut;
    $("rooms").dataset.stale = String(!this.online);
    for (const button of $("rooms").querySelectorAll("button.join-room")) {
      button.disabled = shut || button.classList.contains("full");
    }
  }

  hideError() {
    $("lobby-error").hidden = true;
  }

  renderStatus(state) {
    const words = {
      connecting: "Finding the bar…",
      reconnecting: "Can't reach the server; trying again…",
      closed: "Disconnected. Reload the page to come back.",
    };
    $("lobby-status").textContent = words[state] ?? "";
    $("lobby-status").hidden = !(state in words);
    $("lobby-status").dataset.state = state;
    // Back online once the fresh room list arrives (renderRooms).
    if (state !== "connected" && this.online) {
      this.online = false;
      this._renderDoors();
    }
    if (state === "connected" && $("lobby-error").dataset.code === "unreachable") this.hideError();
  }

  _emptyWords() {
    if (!this.signaling.inviteOnly) return "Nobody is in yet. Be the first: join any room.";
    const room = this._roomId();
    return this.invites.forRoom(room) === null
      ? "This bar is invite-only. To come in, open the invite link its host gave you."
      : `Nobody is in ${room} yet. Your invite opens it: join.`;
  }

  renderRooms(rooms) {
    const list = $("rooms");
    // Nobody opens a room of an invite-only bar without an invite to it.
    $("create").hidden = this.signaling.inviteOnly;
    this.online = this.signaling.connectionState === "connected";
    if (rooms.length === 0) {
      list.replaceChildren(make("li", this._emptyWords(), "empty"));
      this._renderDoors();
      return;
    }
    list.replaceChildren(
      ...rooms.map((room) => {
        const item = make("li", "", "room");
        item.dataset.room = room.roomId;
        item.dataset.count = String(room.count);
        const title = make("span", room.roomId, "room-title");
        const count = make("span", `${room.count} of ${room.capacity}`, "room-count");
        const zones = Object.entries(room.zones)
          .map(([zone, n]) => `${zone} (${plural(n, "user")})`)
          .join(", ");
        const details = make("span", zones || plural(room.count, "user"), "room-zones");
        const full = room.count >= room.capacity;
        const button = make("button", full ? "Full" : "Join", full ? "join-room full" : "join-room");
        button.type = "button";
        button.setAttribute("aria-label", full ? `${room.roomId} is full` : `Join ${room.roomId}`);
        button.addEventListener("click", () => {
          this.room.value = room.roomId;
          this.join(room.roomId);
        });
        item.append(title, count, details, button);
        return item;
      }),
    );
    this._renderDoors();
  }
}

/** One room visit: the mesh, the map, the voices and the chat. */
class Room {
  constructor(space, signaling, devices, roomId, name, token) {
    this.space = space;
    this.signaling = signaling;
    this.devices = devices;
    this.roomId = roomId;
    this.name = name;
    /** The room's invite, on an invite-only server. */
    this.token = token;
    this.audio = new SpatialAudio(space.distanceModel);
    this.peer = new MeshPeer(signaling, space.peer);
    this.map = null;
    this.mic = null;
    /** Microphones asked for so far: only the latest one asked for is used. */
    this._micAsks = 0;
    this._closed = false;
    /** Muted with the Mute button: silent whatever else. */
    this.muted = false;
    /** Push-to-talk: the microphone is on only while `talking` (Space or the button held). */
    this.pushToTalk = localStorage.getItem(PUSH_TO_TALK_KEY) === "true";
    this.talking = false;
    this.zone = null;
    /** Where we appeared, while we still stand there and may step aside (see _settle). */
    this._arrivedAt = null;
    /** Who was in the room before us and has not told us yet where they stand. */
    this._unplaced = null;
    /** peerId -> {name, zone, item, speakingUntil, announce, at: [x, y] or null, heardAt} */
    this.people = new Map();
    this._off = [];
    this._levelTimer = null;
    this._quality = new LinkQuality(space.peer.quality);
    this._measuring = false;
    this._qualityTimer = null;
    window.chatsubo = { space, signaling, peer: this.peer, audio: this.audio };
  }

  /** Join and show the room; rejects (and cleans up) when the server refuses. */
  async enter() {
    this.audio.resume();
    this.audio.speakers.setSink(this.devices.use("audiooutput"));
    const ask = ++this._micAsks;
    const microphone = openMicrophone(this.devices.use("audioinput"));
    this._listen();
    try {
      const joined = await this.signaling.join(this.roomId, this.name, this.token);
      // The invite may fix the name; the server says which.
      this.name = joined.name ?? this.name;
    } catch (error) {
      this.close();
      microphone.then(({ track }) => track?.stop());
      throw error;
    }
    this._show();
    const opened = await microphone;
    if (ask === this._micAsks && !this._closed) this._useMicrophone(opened);
    else opened.track?.stop();
  }

  _listen() {
    const s = this.signaling;
    const p = this.peer;
    this._off.push(
      s.on("peer_list", (m) => {
        this._unplaced ??= new Set(m.peers.map((info) => info.peerId));
        for (const info of m.peers) {
          this._addPerson(info, false);
          // Where each stood as we came in, for those who had said.
          const { peerId, x, y } = info;
          if (typeof x === "number" && typeof y === "number") this._farMoved(peerId, x, y);
        }
      }),
      s.on("positions", (m) => {
        for (const [peerId, x, y] of m.peers) this._farMoved(peerId, x, y);
      }),
      s.on("peer_joined", (m) => this._addPerson(m, !m.resumed)),
      s.on("peer_left", (m) => this._removePerson(m.peerId)),
      s.on("peer_updated", (m) => this._updatePerson(m.peerId, m.name, m.zone ?? null)),
      s.on("connectionstatechange", (state) => this._renderStatus(state)),
      s.on("server_error", (error) => this._notice(error.message)),
      p.on("linkstatechange", ({ peerId }) => this._renderLink(peerId)),
      p.on("peerconnected", (peerId) => this._renderLink(peerId)),
      p.on("peerdisconnected", (peerId) => {
        // Unlinked, not just failed: the voice goes (the volume setting stays).
        if (!this.peer.links.has(peerId)) this.audio.remove(peerId);
        this._renderLink(peerId);
      }),
      p.on("track", ({ peerId, stream }) => this._addVoice(peerId, stream)),
      p.on("position", ({ peerId, position }) => this._moved(peerId, position)),
      p.on("chat", ({ peerId, message }) => this._chatLine(peerId, message.text)),
      this.audio.speakers.on("outputchange", () => this._renderEcho()),
      this.devices.on("change", ({ kind, deviceId }) => {
        // Devices tells only when the device to use changed.
        if (kind === "audiooutput") this.audio.speakers.setSink(deviceId);
        else this.switchMicrophone(deviceId);
      }),
    );
  }

  _show() {
    $("room").hidden = false;
    $("room-name").textContent = this.roomId;
    $("chat-log").replaceChildren();
    $("notices").replaceChildren();
    $("chat-input").maxLength = this.space.peer.chatMaxChars;
    const svg = $("map");
    svg.replaceChildren();
    this.map = new BarMap(svg, this.space.map);
    this.map.setPerson(this.peer.peerId, this.name, true);
    this.map.on("move", ({ x, y }) => this._walked(x, y));
    for (const [peerId, person] of this.people) {
      this.map.setPerson(peerId, person.name);
      if (person.at === null) continue;
      const [x, y] = person.at;
      this.map.place(peerId, x, y, zoneAt(this.space.map, x, y)?.name ?? null);
    }
    const [x, y] = freeSpot(this.space.map, this._others());
    this._arrivedAt = [x, y];
    this.map.jump(x, y);
    this._renderStatus(this.signaling.connectionState);
    this._renderCount();
    this._notice(`You walked into ${this.roomId}.`);
    this._levelTimer = setInterval(() => this._renderLevels(), 250);
    this._qualityTimer = setInterval(() => this._measureQuality(), this.space.peer.quality.interval * 1000);
    this._renderTalk();
    this._renderEcho();
    svg.focus();
  }

  /**
   * Use `track` as our voice (or none, saying `problem`): on every link at
   * once through replaceTrack, with no renegotiation. The old one stops after.
   */
  _useMicrophone({ track, problem }) {
    const old = this.mic;
    this.mic = track ?? null;
    this.peer.setTrack(this.mic);
    this.audio.setMicrophone(this.mic);
    old?.stop();
    // Unplugged: the browser ends the track; take whichever microphone is left.
    track?.addEventListener("ended", () => this.mic === track && this.retryMicrophone());
    $("mic-notice").hidden = this.mic !== null;
    $("mic-notice-text").textContent = problem ?? "";
    $("mute").disabled = this.mic === null;
    this._setMuted(this.mic !== null && this.muted);
    this._renderTalk();
    // Allowed now, so the browser names the devices.
    if (this.mic !== null) this.devices.refresh();
  }

  retryMicrophone() {
    return this.switchMicrophone(this.devices.use("audioinput"));
  }

  /**
   * Talk through the microphone with `deviceId` ("" for the default). If it
   * cannot be opened, the one in use stays, and a notice says why.
   */
  async switchMicrophone(deviceId) {
    const ask = ++this._micAsks;
    const opened = await openMicrophone(deviceId);
    if (this._closed || ask !== this._micAsks) {
      // Left meanwhile, or another was asked for since.
      opened.track?.stop();
    } else if (opened.track === undefined && this.mic?.readyState === "live") {
      this._notice(opened.problem);
    } else {
      this._useMicrophone(opened);
    }
  }

  /** "Headphones help" only where echo is not cancelled: the mix plays directly. */
  _renderEcho() {
    const { output, pending } = this.audio.speakers;
    $("echo-hint").hidden = output !== "direct" || pending;
  }

  toggleMute() {
    this._setMuted(!this.muted);
  }

  _setMuted(muted) {
    this.muted = muted;
    this._applyMicrophone();
    $("mute").textContent = muted ? "Unmute" : "Mute";
    $("mute").setAttribute("aria-pressed", String(muted));
  }

  /** Mute wins; in push-to-talk mode the track is on only while talking. */
  _applyMicrophone() {
    if (this.mic !== null) this.mic.enabled = !this.muted && (!this.pushToTalk || this.talking);
  }

  /** Turn push-to-talk on or off; remembered between visits. */
  setPushToTalk(on) {
    this.pushToTalk = on;
    localStorage.setItem(PUSH_TO_TALK_KEY, String(on));
    this.setTalking(false);
  }

  /** Space or the Hold to talk button went down (true) or up (false). */
  setTalking(talking) {
    this.talking = this.pushToTalk && talking;
    this._applyMicrophone();
    this._renderTalk();
  }

  /**
   * Space on the document, in push-to-talk mode: down talks, up stops. Never
   * while typing (the chat box or any text field), and autorepeat is ignored.
   */
  onSpace(event, down) {
    if (!this.pushToTalk || event.code !== "Space") return;
    // Letting go always stops talking, wherever the focus went meanwhile.
    if (!down && this.talking) this.setTalking(false);
    if (isTyping(event.target) || event.ctrlKey || event.metaKey || event.altKey) return;
    // Not a click on the focused button, nor a scroll of the page.
    event.preventDefault();
    if (event.repeat) return;
    this.setTalking(down);
  }

  _renderTalk() {
    $("ptt").checked = this.pushToTalk;
    const talk = $("talk");
    talk.hidden = !this.pushToTalk;
    talk.disabled = this.mic === null;
    talk.textContent = this.talking ? "Talking" : "Hold to talk";
    talk.setAttribute("aria-pressed", String(this.talking));
  }

  say(text) {
    const message = this.peer.say(text);
    this._chatLine(this.peer.peerId, message.text);
  }

  /** Leave the room and tidy up everything it started. */
  close() {
    this._closed = true;
    clearInterval(this._levelTimer);
    clearInterval(this._qualityTimer);
    for (const off of this._off) off();
    this.peer.close();
    this.signaling.leave();
    this.audio.close();
    this.mic?.stop();
    for (const person of this.people.values()) clearTimeout(person.announce);
    $("people").replaceChildren();
    $("mic-level").value = 0;
    $("room").hidden = true;
  }

  // --- people ------------------------------------------------------------------

  _addPerson(info, announce) {
    const known = this.people.get(info.peerId);
    if (known !== undefined) {
      // A rejoin after a server restart: the server may not know their zone yet.
      this._updatePerson(info.peerId, info.name, info.zone ?? known.zone);
      return;
    }
    const item = make("li", "", "person");
    item.dataset.peer = info.peerId;
    item.dataset.speaking = "false";
    const who = make("span", info.name, "who");
    const where = make("span", "", "where");
    const earshot = make("span", "", "earshot");
    const state = make("span", "", "link-state");
    // Shown only while connected (style.css): bars for the level, the figures on hover.
    const quality = make("span", "", "quality");
    const bars = make("span", "", "bars");
    bars.setAttribute("aria-hidden", "true");
    bars.append(make("span"), make("span"), make("span"));
    const relayed = make("span", "relayed", "relayed");
    relayed.setAttribute("aria-hidden", "true");
    quality.append(bars, make("span", "", "visually-hidden"), relayed);
    const volumeId = `volume-${info.peerId}`;
    const label = make("label", `Volume for ${info.name}`, "visually-hidden");
    label.htmlFor = volumeId;
    const volume = Object.assign(document.createElement("input"), {
      type: "range", id: volumeId, className: "volume", min: "0", max: "1", step: "0.05", value: "1",
    });
    volume.addEventListener("input", () => this.audio.setVolume(info.peerId, Number(volume.value)));
    item.append(who, where, earshot, state, quality, label, volume);
    $("people").append(item);
    const person = {
      name: info.name, zone: null, item, speakingUntil: 0, announce: null, at: null, heardAt: -Infinity,
    };
    this.people.set(info.peerId, person);
    this._renderQuality(person, UNMEASURED);
    this.map?.setPerson(info.peerId, info.name);
    this._updatePerson(info.peerId, info.name, info.zone ?? null);
    this._renderLink(info.peerId);
    this._renderEarshot(person);
    this._renderCount();
    if (announce) {
      // The zone usually follows within moments; announce with it if it does.
      person.announce = setTimeout(() => this._announce(info.peerId), ZONE_WAIT);
    }
  }

  _announce(peerId) {
    const person = this.people.get(peerId);
    if (person?.announce == null) return;
    clearTimeout(person.announce);
    person.announce = null;
    this._notice(person.zone ? `${person.name} joined ${person.zone}` : `${person.name} joined`);
  }

  _updatePerson(peerId, name, zone) {
    const person = this.people.get(peerId);
    if (person === undefined) return;
    person.name = name;
    const who = person.item.querySelector(".who");
    who.textContent = name;
    // A long name is cut short on screen; hovering shows it whole.
    who.title = name;
    person.item.querySelector("label").textContent = `Volume for ${name}`;
    this.map?.setPerson(peerId, name);
    this._setZone(person, zone);
  }

  _setZone(person, zone) {
    person.zone = zone;
    person.item.querySelector(".where").textContent = zone ?? "";
    if (zone && person.announce !== null) this._announce(person.item.dataset.peer);
  }

  _removePerson(peerId) {
    const person = this.people.get(peerId);
    if (person === undefined) return;
    clearTimeout(person.announce);
    person.item.remove();
    this.people.delete(peerId);
    this.map?.remove(peerId);
    this.audio.remove(peerId, true);
    this._renderCount();
    this._notice(`${person.name} left`);
  }

  /** Read every connected link's stats, all at once; a slow reading is not overtaken. */
  async _measureQuality() {
    if (this._measuring) return;
    this._measuring = true;
    try {
      await Promise.all(
        [...this.people].map(async ([peerId, person]) => {
          const link = this.peer.links.get(peerId);
          // Closed meanwhile (unlinked, replaced, left): nothing to say.
          const figures = link?.connected
            ? await this._quality.measure(link.pc).catch(() => UNMEASURED)
            : UNMEASURED;
          this._renderQuality(person, figures);
        }),
      );
    } finally {
      this._measuring = false;
    }
  }

  /** A person's connection indicator: the level, the route, and the figures on hover. */
  _renderQuality(person, figures) {
    const indicator = person.item.querySelector(".quality");
    const { label, title } = describeQuality(figures);
    indicator.dataset.level = figures.level;
    indicator.dataset.route = figures.route ?? "unknown";
    indicator.title = title;
    indicator.querySelector(".visually-hidden").textContent = label;
  }

  _renderCount() {
    const n = this.people.size;
    $("people-count").textContent = n ? `(${n + 1} with you)` : "";
    $("people-empty").hidden = n > 0;
  }

  _renderLink(peerId) {
    const person = this.people.get(peerId);
    const link = this.peer.links.get(peerId);
    if (person === undefined) return;
    // No connection: either the server linked us and the peer's offer is on its way, or not.
    let state = link?.pc.connectionState ?? (this.peer.linked.has(peerId) ? "new" : "unlinked");
    if (link?.connected) state = "connected";
    else if (state === "connected") state = "connecting";
    const words = {
      new: "waiting", connecting: "connecting…", connected: "", disconnected: "trouble…",
      failed: "retrying…", closed: "gone", unlinked: "",
    };
    person.item.dataset.state = state;
    person.item.querySelector(".link-state").textContent = words[state] ?? state;
  }

  /** Whether someone is within the hearing range of where we stand: "in earshot" or "across the room". */
  _renderEarshot(person) {
    let earshot = "unknown";
    if (person.at !== null) {
      const [x, y] = this.audio.listener;
      const distance = Math.hypot(person.at[0] - x, person.at[1] - y);
      earshot = distance < this.space.distanceModel.hearingRange ? "near" : "far";
    }
    if (person.item.dataset.earshot === earshot) return;
    person.item.dataset.earshot = earshot;
    const words = { near: "in earshot", far: "across the room", unknown: "" };
    person.item.querySelector(".earshot").textContent = words[earshot];
  }

  _renderLevels() {
    const now = performance.now();
    showLevel($("mic-level"), this.audio.microphoneLevel());
    for (const [peerId, person] of this.people) {
      if (this.audio.speaking(peerId)) person.speakingUntil = now + SPEAKING_HOLD;
      const speaking = now < person.speakingUntil;
      if (person.item.dataset.speaking !== String(speaking)) {
        person.item.dataset.speaking = String(speaking);
        this.map.setSpeaking(peerId, speaking);
      }
    }
  }

  _renderStatus(state) {
    const status = $("status");
    const down = state === "reconnecting" || state === "connecting";
    status.dataset.state = down ? "reconnecting" : state;
    status.textContent = down
      ? "Reconnecting… (you can still hear everyone)"
      : state === "closed"
        ? "Disconnected"
        : "Connected";
  }

  // --- voices, places and words ----------------------------------------------------

  _addVoice(peerId, stream) {
    const position = this.peer.links.get(peerId)?.position;
    this.audio.add(peerId, stream, position ? [position.x, position.y] : null);
  }

  /** A linked peer's own word, peer to peer, on where it stands. */
  _moved(peerId, position) {
    const zone = typeof position.zone === "string" ? position.zone : null;
    this.map?.place(peerId, position.x, position.y, zone);
    this.audio.move(peerId, position.x, position.y);
    const person = this.people.get(peerId);
    if (person !== undefined) {
      person.at = [position.x, position.y];
      person.heardAt = performance.now();
      if (person.zone !== zone) this._setZone(person, zone);
      this._renderEarshot(person);
    }
    this._settle(peerId);
  }

  /**
   * Where the server says someone stands (`positions`, `peer_list`): how we
   * see everyone we are not linked to. A linked peer's own, fresher updates win.
   */
  _farMoved(peerId, x, y) {
    const person = this.people.get(peerId);
    if (person === undefined) return;
    if (this.peer.linked.has(peerId) && performance.now() - person.heardAt < P2P_FRESH) return;
    person.at = [x, y];
    this.map?.place(peerId, x, y, zoneAt(this.space.map, x, y)?.name ?? null, FAR_GLIDE);
    this.audio.move(peerId, x, y);
    this._renderEarshot(person);
    this._settle(peerId);
  }

  /** Where everyone stands, as far as we have heard. */
  _others() {
    return [...this.people.values()].filter((person) => person.at !== null).map((person) => person.at);
  }

  /**
   * Step aside if someone who was here first turns out to stand where we
   * appeared: checked once for each of them, on their first position, while
   * we have not walked yet. They never move for us (as Bot._settle).
   */
  _settle(peerId) {
    if (!this._unplaced?.delete(peerId) || this._arrivedAt === null) return;
    const [x, y] = this.audio.listener;
    if (x !== this._arrivedAt[0] || y !== this._arrivedAt[1]) return;
    const others = this._others();
    if (isFree(this.space.map, x, y, others)) return;
    this._arrivedAt = freeSpot(this.space.map, others);
    this.map.jump(...this._arrivedAt);
  }

  /**
   * Our own avatar moved: tell the linked peers and the server (which links
   * us by it, and shows us to the rest), move our ears, tell the lobby our zone.
   */
  _walked(x, y) {
    const zone = zoneAt(this.space.map, x, y)?.name ?? null;
    this.peer.move(x, y, zone);
    this.signaling.update({ x: Math.round(x * 100) / 100, y: Math.round(y * 100) / 100 });
    this.audio.setListener(x, y);
    for (const person of this.people.values()) this._renderEarshot(person);
    if (zone !== this.zone) {
      this.zone = zone;
      this.signaling.update({ zone });
    }
  }

  _chatLine(peerId, text) {
    const own = peerId === this.peer.peerId;
    const name = own ? this.name : (this.people.get(peerId)?.name ?? "someone");
    const line = make("li", "", own ? "chat-line own" : "chat-line");
    line.dataset.from = peerId;
    // The colon is text, so that a copied line and a screen reader get "name: text".
    line.append(make("span", name, "who"), ": ", make("span", text, "text"));
    const log = $("chat-log");
    log.append(line);
    while (log.children.length > MAX_CHAT_LINES) log.firstElementChild.remove();
    // Scroll the log, not the page: on a phone the page would jump away from the map.
    log.scrollTop = log.scrollHeight;
  }

  _notice(text) {
    const notices = $("notices");
    notices.append(make("li", text));
    while (notices.children.length > MAX_NOTICES) notices.firstElementChild.remove();
  }
}

async function main() {
  let space;
  let protocol;
  try {
    [space, protocol] = await Promise.all([loadSpace(), loadProtocol()]);
  } catch {
    showError("unreachable", "Can't reach the Chatsubo server. Check that it is running, then try again.");
    $("join").disabled = true;
    $("retry").addEventListener("click", () => window.location.reload());
    return;
  }
  const signaling = new SignalingClient(protocol);
  const devices = new Devices(localStorage);
  for (const select of document.querySelectorAll("select[data-device]")) {
    devices.bind(select, select.dataset.device);
  }
  // Where the browser can't send the mix to chosen speakers, it picks them itself.
  for (const node of document.querySelectorAll(".speakers")) node.hidden = !canChooseSpeakers();
  devices.refresh();
  let room = null;
  const lobby = new Lobby(signaling, devices, async (roomId, name, token) => {
    const visit = new Room(space, signaling, devices, roomId, name, token);
    await visit.enter();
    room = visit;
  });
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("chat-input");
    const text = input.value.trim();
    if (room !== null && text) room.say(text);
    input.value = "";
  });
  $("mute").addEventListener("click", () => room?.toggleMute());
  $("ptt").addEventListener("change", (event) => room?.setPushToTalk(event.target.checked));
  document.addEventListener("keydown", (event) => room?.onSpace(event, true));
  document.addEventListener("keyup", (event) => room?.onSpace(event, false));
  // A key or a finger let go elsewhere (another window, a lost pointer) stops talking.
  window.addEventListener("blur", () => room?.setTalking(false));
  const talk = $("talk");
  talk.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    // Held even when the finger slides off the button; let go anywhere ends it.
    if (event.isTrusted) talk.setPointerCapture(event.pointerId);
    room?.setTalking(true);
  });
  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
    talk.addEventListener(type, () => room?.setTalking(false));
  }
  // A long press on a touch screen must not open a menu.
  talk.addEventListener("contextmenu", (event) => event.preventDefault());
  $("mic-retry").addEventListener("click", () => room?.retryMicrophone());
  $("leave").addEventListener("click", () => {
    room?.close();
    room = null;
    lobby.show();
    $("join").focus();
  });
  window.addEventListener("pagehide", () => signaling.close());
  signaling.start();
  lobby.show();
}

main();
