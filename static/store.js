// The conversations, kept in this browser (localStorage): an index of {id, title, updated} under
// "streamapp.chats" and each conversation under "streamapp.chat.<id>", so a growing answer
// rewrites only its own conversation. An answer still streaming keeps its resume point (stream id
// and last event id, or last WebSocket seq) in the same object as its text, and both are written
// together: a reload resumes from exactly the text it shows.
"use strict";

const INDEX = "streamapp.chats";
const PREFIX = "streamapp.chat.";
const CURRENT = "streamapp.current";
const SAVE_MS = 250;  // a streaming answer is written at most this often (and at once on pagehide)

export function newId() {
  const r = new Uint32Array(2);
  crypto.getRandomValues(r);  // available on plain http too, unlike crypto.randomUUID
  return Date.now().toString(36) + r[0].toString(36) + r[1].toString(36);
}

function read(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value === null ? fallback : value;
  } catch (e) {
    return fallback;  // unreadable (edited by hand): start afresh
  }
}

export class Store {
  constructor(onError) {
    this.onError = onError;  // called with words when the browser refuses to store
    this.dirty = new Map();
    this.timer = null;
  }

  list() {
    const index = read(INDEX, []);
    return Array.isArray(index) ? index.slice().sort((a, b) => b.updated - a.updated) : [];
  }

  load(id) {
    const conv = read(PREFIX + id, null);
    return conv && Array.isArray(conv.messages) ? conv : null;
  }

  get current() { return localStorage.getItem(CURRENT); }
  set current(id) { localStorage.setItem(CURRENT, id); }

  create() {
    return { id: newId(), title: "New chat", updated: Date.now(), messages: [] };
  }

  save(conv) {
    this.dirty.delete(conv.id);
    conv.updated = Date.now();
    try {
      localStorage.setItem(PREFIX + conv.id, JSON.stringify(conv));
      const index = this.list().filter((c) => c.id !== conv.id);
      index.push({ id: conv.id, title: conv.title, updated: conv.updated });
      localStorage.setItem(INDEX, JSON.stringify(index));
    } catch (e) {  // QuotaExceededError: the conversation lives on in this page only
      this.onError("This browser's storage is full: delete old conversations to keep new ones.");
    }
  }

  // Save soon: a streaming answer is written a few times a second, not once per token.
  later(conv) {
    this.dirty.set(conv.id, conv);
    if (this.timer === null) this.timer = setTimeout(() => this.flush(), SAVE_MS);
  }

  flush() {
    clearTimeout(this.timer);
    this.timer = null;
    for (const conv of [...this.dirty.values()]) this.save(conv);
  }

  remove(id) {
    this.dirty.delete(id);
    localStorage.removeItem(PREFIX + id);
    localStorage.setItem(INDEX, JSON.stringify(this.list().filter((c) => c.id !== id)));
  }

  // Whether a storage event from another tab concerns `id` (or the list, with no id).
  static concerns(event, id) {
    return id ? event.key === PREFIX + id : event.key === INDEX;
  }
}
