// Invite links and the invites the page keeps (docs/protocol.md, "join"): the
// room rides in the query (?room=NAME) and the invite in the fragment
// (#token=...), which browsers never send to the server, so it stays out of
// every access log.

const INVITES_KEY = "chatsubo.invites";
/** The `room` claim of an invite to every room. */
const ANY_ROOM = "*";

/** What the page's address carries: `{room, token}`, each null when absent. */
export function readInviteLink(location) {
  const query = new URLSearchParams(location.search);
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
  return { room: query.get("room"), token: fragment.get("token") };
}

/** Take the invite out of the address bar, so that a copied or bookmarked URL does not carry it. */
export function forgetFragment(history, location) {
  history.replaceState(history.state, "", location.pathname + location.search);
}

/**
 * What an invite says about itself: `{room, name, exp}`, or null when it is
 * not one. Unverified, and used only to file it and to show the name it
 * fixes: the server checks the signature.
 */
export function inviteClaims(token) {
  try {
    const body = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(body));
    if (claims.use !== "invite" || typeof claims.room !== "string") return null;
    return {
      room: claims.room,
      name: typeof claims.name === "string" ? claims.name : null,
      exp: typeof claims.exp === "number" ? claims.exp : null,
    };
  } catch {
    return null;
  }
}

/** The invites this browser holds, by room, kept between visits; expired ones are dropped. */
export class Invites {
  constructor(storage, now = Date.now()) {
    this.storage = storage;
    this.byRoom = {};
    try {
      this.byRoom = JSON.parse(storage.getItem(INVITES_KEY) ?? "{}") ?? {};
    } catch {
      // A garbled entry holds nothing worth keeping.
    }
    for (const [room, token] of Object.entries(this.byRoom)) {
      const exp = inviteClaims(token)?.exp;
      if (typeof token !== "string" || (exp !== null && exp !== undefined && exp * 1000 < now)) {
        delete this.byRoom[room];
      }
    }
    this._save();
  }

  /** Keep `token`, filed under the room it opens (or `fallbackRoom`); the room it opens. */
  keep(token, fallbackRoom) {
    const room = inviteClaims(token)?.room ?? fallbackRoom;
    if (room) {
      this.byRoom[room] = token;
      this._save();
    }
    return room;
  }

  /** The invite to `roomId`, or to every room, or null. */
  forRoom(roomId) {
    return this.byRoom[roomId] ?? this.byRoom[ANY_ROOM] ?? null;
  }

  /** Drop the invite the server refused for `roomId`. */
  forget(roomId) {
    const token = this.forRoom(roomId);
    for (const [room, held] of Object.entries(this.byRoom)) {
      if (held === token) delete this.byRoom[room];
    }
    this._save();
  }

  _save() {
    try {
      this.storage.setItem(INVITES_KEY, JSON.stringify(this.byRoom));
    } catch {
      // Private browsing may refuse storage: the invite then lasts this visit.
    }
  }
}
