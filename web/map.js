// The bar's floor plan in SVG, with everyone's avatar on it. Map units are
// meters (the SVG's viewBox is the map), so a click lands where it points.

import { Emitter } from "./events.js";
import { clamp, zoneAt } from "./space.js";

const SVG = "http://www.w3.org/2000/svg";
/** Meters per second when walking to a clicked spot. */
const WALK_SPEED = 4;
/** Meters per arrow key or WASD press. */
const STEP = 0.5;
/** Remote avatars glide to each update over a little more than one update interval. */
const GLIDE_MS = 150;
const KEYS = {
  ArrowUp: [0, -1], ArrowDown: [0, 1], ArrowLeft: [-1, 0], ArrowRight: [1, 0],
  w: [0, -1], s: [0, 1], a: [-1, 0], d: [1, 0],
};
/** Furniture drawn as the ellipse inside its rectangle; the rest are rounded boxes. */
const ROUND = new Set(["stool", "table", "plant"]);
/** Meters of floor drawn around the map, so that someone standing at its edge shows whole. */
const MARGIN = 1;
/** An avatar's radius in meters, as drawn; the speaking ring is wider. */
const BODY = 0.45;
const RING = 0.75;
/** Meters from an avatar's middle to its label, clear of the speaking ring. */
const LABEL_OFFSET = 0.85;
/** Labels longer than this (meters) are cut short; the full name is in the avatar's title. */
const LABEL_MAX_WIDTH = 7.5;
/** Meters kept between a label and other labels or avatars. */
const LABEL_GAP = 0.12;
const ZONE_COLORS = ["#5a2e1f", "#1f3a5a", "#3d2a4f", "#2e4a35", "#5a1f45", "#4a4a22"];

function element(name, attributes = {}) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

/** A stable color for a peer id. */
function hue(peerId) {
  let h = 0;
  for (const c of peerId) h = (h * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${h} 70% 62%)`;
}

class Avatar {
  constructor(layer, peerId, name, me) {
    this.node = element("g", { class: me ? "avatar me" : "avatar", "data-peer": peerId });
    // The title names the avatar, on hover and to screen readers; the label may be cut short.
    this.title = element("title");
    this.ring = element("circle", { r: RING, class: "speaking-ring" });
    this.body = element("circle", { r: BODY, fill: hue(peerId) });
    this.label = element("text", { x: 0, y: 0, "text-anchor": "middle", "aria-hidden": "true" });
    this.node.append(this.title, this.ring, this.body, this.label);
    layer.append(this.node);
    this.setName(name);
    this.drawn = null;
    this.from = null;
    this.to = null;
    this.start = 0;
    this.glide = GLIDE_MS;
  }

  setName(name) {
    // Text, never markup: names come from other people.
    this.name = name;
    this.title.textContent = name;
    this.label.textContent = name;
    /** The label's box relative to its anchor, once measured at the current font size. */
    this.box = null;
  }

  /** Cut the label to fit `maxWidth` meters and measure it; false while it cannot be measured. */
  measure(maxWidth) {
    const label = this.label;
    label.textContent = this.name;
    if (label.getComputedTextLength() > maxWidth) {
      const letters = Array.from(new Intl.Segmenter().segment(this.name), (part) => part.segment);
      const cut = (n) => `${letters.slice(0, n).join("").trimEnd()}…`;
      let [fits, long] = [0, letters.length];
      while (long - fits > 1) {
        const n = (fits + long) >> 1;
        label.textContent = cut(n);
        if (label.getComputedTextLength() <= maxWidth) fits = n;
        else long = n;
      }
      label.textContent = cut(fits);
    }
    const { x, y, width, height } = label.getBBox();
    // Nothing to measure while the map is not shown.
    if (width === 0) return false;
    const at = (name) => Number(label.getAttribute(name));
    this.box = { dx: x - at("x"), dy: y - at("y"), width, height };
    return true;
  }

  /** Put the label's box with its top left corner at (left, top), in map meters. */
  placeLabel(left, top) {
    const [x, y] = this.drawn;
    const labelX = (left - x - this.box.dx).toFixed(3);
    const labelY = (top - y - this.box.dy).toFixed(3);
    if (this.label.getAttribute("x") !== labelX) this.label.setAttribute("x", labelX);
    if (this.label.getAttribute("y") !== labelY) this.label.setAttribute("y", labelY);
  }

  /** Draw at (x, y); `zone` is recorded when given (a name, or null for none). */
  draw([x, y], zone) {
    this.drawn = [x, y];
    this.node.setAttribute("transform", `translate(${x.toFixed(3)} ${y.toFixed(3)})`);
    this.node.dataset.x = x.toFixed(2);
    this.node.dataset.y = y.toFixed(2);
    if (zone !== undefined) this.node.dataset.zone = zone ?? "";
  }
}

/**
 * The map view. Emits `move` ({x, y}) as our own avatar walks, for the
 * peer, the audio listener and the zone.
 */
export class BarMap extends Emitter {
  constructor(svg, map) {
    super();
    this.svg = svg;
    this.map = map;
    /** @type {Map<string, Avatar>} */
    this.avatars = new Map();
    this.me = null;
    this._walkTarget = null;
    this._frame = null;
    this._lastFrame = 0;
    svg.setAttribute("viewBox", `${-MARGIN} ${-MARGIN} ${map.width + 2 * MARGIN} ${map.height + 2 * MARGIN}`);
    this._drawZones();
    this.layer = element("g", { class: "avatars" });
    svg.append(this.layer);
    svg.addEventListener("click", (event) => this._onClick(event));
    svg.addEventListener("keydown", (event) => this._onKey(event));
    // The labels' font size follows the screen: measure them again when the map is resized.
    const resized = new ResizeObserver(() => {
      if (!this.layer.isConnected) {
        resized.disconnect();
        return;
      }
      for (const avatar of this.avatars.values()) avatar.box = null;
      this._animate();
    });
    resized.observe(svg);
  }

  /** The floor: zones with their names, then the furniture. */
  _drawZones() {
    const tiles = element("pattern", { id: "dance-tiles", width: 2, height: 2, patternUnits: "userSpaceOnUse" });
    tiles.append(
      element("rect", { width: 2, height: 2, fill: "#2a1033" }),
      element("rect", { width: 1, height: 1, fill: "#ff5fa2" }),
      element("rect", { x: 1, y: 1, width: 1, height: 1, fill: "#58d6ff" }),
    );
    const defs = element("defs");
    defs.append(tiles);
    this.svg.append(defs);
    const floor = element("g", { class: "zones" });
    const labels = element("g", { class: "zone-labels", "aria-hidden": "true" });
    this.map.zones.forEach((zone, i) => {
      const group = element("g", { class: "zone", "data-zone": zone.name });
      const rect = element("rect", {
        x: zone.x, y: zone.y, width: zone.width, height: zone.height,
        fill: ZONE_COLORS[i % ZONE_COLORS.length],
      });
      const label = element("text", { x: zone.x + 0.4, y: zone.y + 0.9, class: "zone-label" });
      label.textContent = zone.name;
      group.append(rect);
      floor.append(group);
      labels.append(label);
    });
    const furniture = element("g", { class: "furniture", "aria-hidden": "true" });
    for (const item of this.map.furniture ?? []) {
      const shape = ROUND.has(item.kind)
        ? element("ellipse", {
            cx: item.x + item.width / 2, cy: item.y + item.height / 2,
            rx: item.width / 2, ry: item.height / 2,
          })
        : element("rect", { x: item.x, y: item.y, width: item.width, height: item.height, rx: 0.15 });
      shape.classList.add(item.kind);
      furniture.append(shape);
    }
    this.svg.append(floor, furniture, labels);
  }

  /** Add or rename someone; `me` marks our own avatar. */
  setPerson(peerId, name, me = false) {
    const avatar = this.avatars.get(peerId);
    if (avatar === undefined) {
      this.avatars.set(peerId, new Avatar(this.layer, peerId, name, me));
      if (me) this.me = peerId;
    } else if (avatar.name !== name) {
      avatar.setName(name);
    }
    this._animate();
  }

  remove(peerId) {
    this.avatars.get(peerId)?.node.remove();
    this.avatars.delete(peerId);
    this._animate();
  }

  /** Someone else stands at (x, y) now: glide there from where they are drawn, over `glide` ms. */
  place(peerId, x, y, zone, glide = GLIDE_MS) {
    const avatar = this.avatars.get(peerId);
    if (avatar === undefined) return;
    avatar.node.dataset.zone = zone ?? "";
    if (avatar.drawn === null) {
      avatar.draw([x, y]);
      this._animate();
      return;
    }
    avatar.from = avatar.drawn;
    avatar.to = [x, y];
    avatar.start = performance.now();
    avatar.glide = glide;
    this._animate();
  }

  setSpeaking(peerId, speaking) {
    this.avatars.get(peerId)?.node.classList.toggle("speaking", speaking);
  }

  /** Put our own avatar at (x, y) at once (on arrival). */
  jump(x, y) {
    this.avatars.get(this.me)?.draw([x, y], zoneAt(this.map, x, y)?.name ?? null);
    this._walkTarget = null;
    this._animate();
    this.emit("move", { x, y });
  }

  /** Walk our avatar to (x, y) at a stroll. */
  walkTo(x, y) {
    this._walkTarget = clamp(this.map, x, y);
    this._animate();
  }

  _onClick(event) {
    const point = new DOMPoint(event.clientX, event.clientY).matrixTransform(
      this.svg.getScreenCTM().inverse(),
    );
    this.svg.focus();
    this.walkTo(point.x, point.y);
  }

  _onKey(event) {
    const step = KEYS[event.key.length === 1 ? event.key.toLowerCase() : event.key];
    const me = this.avatars.get(this.me);
    if (step === undefined || me?.drawn == null || event.ctrlKey || event.metaKey || event.altKey) {
      return;
    }
    event.preventDefault();
    const [x, y] = this._walkTarget ?? me.drawn;
    this.walkTo(x + step[0] * STEP, y + step[1] * STEP);
  }

  _animate() {
    if (this._frame === null) {
      this._lastFrame = performance.now();
      this._frame = requestAnimationFrame((t) => this._tick(t));
    }
  }

  _tick(now) {
    this._frame = null;
    const elapsed = Math.max(0, now - this._lastFrame) / 1000;
    this._lastFrame = now;
    let moving = this._walk(elapsed);
    for (const avatar of this.avatars.values()) {
      if (avatar.to === null) continue;
      const t = Math.min(1, (now - avatar.start) / avatar.glide);
      const [fx, fy] = avatar.from;
      const [tx, ty] = avatar.to;
      avatar.draw([fx + (tx - fx) * t, fy + (ty - fy) * t]);
      if (t >= 1) avatar.to = null;
      else moving = true;
    }
    // A frame is drawn only when someone moved, came, went or was renamed.
    this._layOutLabels();
    if (moving) this._frame = requestAnimationFrame((t) => this._tick(t));
  }

  /**
   * Put each label under its avatar, or stacked below (or above) the labels
   * and avatars in its way, so that none covers another and all stay on the
   * map. The avatars themselves stay where the people are.
   */
  _layOutLabels() {
    // Labels may stand out into the margin, but no further.
    const edge = -MARGIN / 2;
    const right = this.map.width + MARGIN / 2;
    const bottom = this.map.height + MARGIN / 2;
    const drawn = [...this.avatars.values()].filter((avatar) => avatar.drawn !== null);
    const taken = drawn.map(({ drawn: [x, y] }) => ({
      left: x - BODY, top: y - BODY, width: 2 * BODY, height: 2 * BODY,
    }));
    const clear = (box) =>
      box.top >= edge &&
      box.top + box.height <= bottom &&
      taken.every(
        (other) =>
          box.left >= other.left + other.width + LABEL_GAP ||
          other.left >= box.left + box.width + LABEL_GAP ||
          box.top >= other.top + other.height + LABEL_GAP ||
          other.top >= box.top + box.height + LABEL_GAP,
      );
    // Top to bottom, so that labels stack the same way from frame to frame.
    drawn.sort((a, b) => a.drawn[1] - b.drawn[1] || a.drawn[0] - b.drawn[0]);
    for (const avatar of drawn) {
      if (avatar.box === null && !avatar.measure(LABEL_MAX_WIDTH)) continue;
      const [x, y] = avatar.drawn;
      const { width, height } = avatar.box;
      const left = Math.min(Math.max(x - width / 2, edge), right - width);
      const under = y + LABEL_OFFSET;
      const tops = [under, y - LABEL_OFFSET - height];
      for (const other of taken) {
        if (left < other.left + other.width + LABEL_GAP && other.left < left + width + LABEL_GAP) {
          tops.push(other.top + other.height + LABEL_GAP, other.top - height - LABEL_GAP);
        }
      }
      let best = null;
      for (const top of tops) {
        const box = { left, top, width, height };
        if (clear(box) && (best === null || Math.abs(top - under) < Math.abs(best.top - under))) best = box;
      }
      best ??= { left, top: Math.min(under, bottom - height), width, height };
      avatar.placeLabel(best.left, best.top);
      taken.push(best);
    }
  }

  /** One frame of our own walk; whether there is more to go. */
  _walk(elapsed) {
    const me = this.avatars.get(this.me);
    if (this._walkTarget === null || me?.drawn == null) return false;
    const [x, y] = me.drawn;
    const [tx, ty] = this._walkTarget;
    const distance = Math.hypot(tx - x, ty - y);
    const stride = WALK_SPEED * elapsed;
    const arrived = distance <= stride;
    const next = arrived ? [tx, ty] : [x + ((tx - x) * stride) / distance, y + ((ty - y) * stride) / distance];
    me.draw(next, zoneAt(this.map, ...next)?.name ?? null);
    if (arrived) this._walkTarget = null;
    this.emit("move", { x: next[0], y: next[1] });
    return !arrived;
  }
}
