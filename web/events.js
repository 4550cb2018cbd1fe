// A small event emitter on top of EventTarget, in the spirit of the Python side's pyee.

/** Emits named events whose listeners receive the event's detail. */
export class Emitter extends EventTarget {
  /** Call `listener(detail)` on every `type` event; returns a function that unsubscribes. */
  on(type, listener) {
    const wrapped = (event) => listener(event.detail);
    this.addEventListener(type, wrapped);
    return () => this.removeEventListener(type, wrapped);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
