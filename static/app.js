// streamapp demo page: conversations kept in this browser, answers streamed by SSE or WebSocket
// (stream.js) and resumed after a reload, rendered as sanitized Markdown (render.js), the model
// picker from GET /v1/models, and sign-in by session cookie when the server needs a key.
"use strict";

import { bubble, update } from "./render.js";
import { Refused, sseAnswer, wsAnswer } from "./stream.js";
import { Store } from "./store.js";

const $ = (id) => document.getElementById(id);
const authRequired = document.body.dataset.authRequired === "true";
let signedIn = Boolean(document.body.dataset.sessionClient);
const MODEL_KEY = "streamapp.model";
const FOLLOW_PX = 64;  // this close to the bottom, the view follows a growing answer

const store = new Store((words) => { $("status").textContent = words; });
const cache = new Map();  // conversation id -> its one object in this page (a running answer writes into it)
let conv = null;          // the conversation shown
const views = new Map();  // message -> its bubble, for the conversation shown
let running = null;       // {conv, msg, ctl}: the answer streaming (one at a time)

function getConv(id) {
  if (!id) return null;
  if (!cache.has(id)) {
    const found = store.load(id);
    if (!found) return null;
    cache.set(id, found);
  }
  return cache.get(id);
}

// ---- the view ----------------------------------------------------------------------------

const scroller = () => document.scrollingElement;
const nearBottom = () => { const s = scroller(); return s.scrollHeight - s.scrollTop - s.clientHeight < FOLLOW_PX; };
const toBottom = () => { scroller().scrollTop = scroller().scrollHeight; };

function draw(msg) {
  const view = views.get(msg);
  if (!view) return;
  const follow = nearBottom();  // measured before the answer grows: a reader who scrolled up stays put
  update(view, msg);
  if (follow) toBottom();
}

const queued = new Set();
function drawSoon(msg) {  // at most once per frame, however fast the tokens come
  if (!queued.size) requestAnimationFrame(() => { for (const m of queued) draw(m); queued.clear(); });
  queued.add(msg);
}

function append(msg) {
  const view = bubble(msg);
  views.set(msg, view);
  $("log").querySelector(".empty")?.remove();
  $("log").appendChild(view);
  return view;
}

function show(c) {
  conv = c;
  store.current = c.id;
  views.clear();
  $("log").replaceChildren();
  if (!c.messages.length) {
    const hint = document.createElement("p");
    hint.className = "empty hint";
    hint.textContent = "Answers stream token by token from POST /api/chat (SSE) or over one WebSocket "
      + "to /ws, render Markdown, and pick up where they were after a reload.";
    $("log").appendChild(hint);
  }
  c.messages.forEach(append);
  renderList();
  closeSidebar();
  toBottom();
}

function renderList() {
  const items = store.list();
  if (conv && !items.some((i) => i.id === conv.id)) items.unshift({ id: conv.id, title: conv.title });
  $("conversations").replaceChildren(...items.map((item) => {
    const li = document.createElement("li");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = item.title;
    if (conv && item.id === conv.id) open.setAttribute("aria-current", "true");
    open.addEventListener("click", () => { const c = getConv(item.id); if (c) show(c); });
    const del = document.createElement("button");
    del.type = "button";
    del.className = "delete";
    del.textContent = "×";
    del.setAttribute("aria-label", `Delete “${item.title}”`);
    del.addEventListener("click", () => remove(item.id));
    li.append(open, del);
    return li;
  }));
}

function remove(id) {
  const c = cache.get(id);
  if (c) c.deleted = true;  // a running answer no longer saves it
  if (running && running.conv.id === id && running.ctl.stop) running.ctl.stop();
  store.remove(id);
  cache.delete(id);
  if (conv && conv.id === id) show(getConv(store.list()[0]?.id) || store.create());
  else renderList();
}

function closeSidebar() {
  $("sidebar").classList.remove("open");
  $("menu").setAttribute("aria-expanded", "false");
}

$("menu").addEventListener("click", () => {
  const open = $("sidebar").classList.toggle("open");
  $("menu").setAttribute("aria-expanded", String(open));
});

$("new-chat").addEventListener("click", () => {
  if (conv.messages.length) show(store.create());
  else closeSidebar();
  $("message").focus();
});

// ---- chatting ----------------------------------------------------------------------------

// The earlier turns for the server: a refused message (nothing streamed) stays out, or it would
// be refused again.
function historyOf(c) {
  const turns = [];
  for (let i = 0; i < c.messages.length; i++) {
    const m = c.messages[i];
    const next = c.messages[i + 1];
    if (m.role === "user" && next && next.error && !next.content) { i++; continue; }
    turns.push({ role: m.role, content: m.content });
  }
  return turns;
}

function titleOf(text) {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length > 48 ? `${line.slice(0, 47)}…` : line;
}

function setBusy(busy, words) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  if (words !== undefined) $("status").textContent = words;
}

// Words for a request the server refused before any event.
async function refusedWords(err) {
  let status = err.status;
  if (err.code === "socket_refused") {  // a WebSocket refusal has no status: ask a plain request why
    status = await fetch("/v1/models", { method: "GET" }).then((r) => r.status, () => 0);
    if (status < 400) return "Could not open the WebSocket to this server.";
  }
  if (status === 401) {
    const words = signedIn ? "Your session has ended: sign in again to go on."
      : "This server needs an API key: sign in to chat.";
    signedIn = false;
    needKey(words);
    return words;
  }
  return err.message;
}

async function run(c, msg, body) {
  let resuming = !body;
  const ctl = {
    stop: null,
    changed(now) {
      if (resuming && !now) {  // the first event after a resume: streaming again
        resuming = false;
        $("status").textContent = "streaming (resumed)…";
      }
      if (c.deleted) return;
      if (now) store.save(c); else store.later(c);
      if (c === conv) drawSoon(msg);
    },
  };
  running = { conv: c, msg, ctl };
  setBusy(true, body ? "streaming…" : "resuming the answer…");
  try {
    await (msg.pending.transport === "ws" ? wsAnswer : sseAnswer)(msg, body, ctl);
  } catch (err) {
    if (!(err instanceof Refused)) throw err;
    const words = await refusedWords(err);
    if (err.status === 401 && msg.pending && msg.pending.streamId) {
      msg.note = "Sign in to see the rest of this answer.";  // resumed after signing in
    } else {
      msg.error = words;
      msg.code = err.code;
      delete msg.pending;
    }
  }
  if (!c.deleted) store.save(c);
  if (c === conv) draw(msg);
  running = null;
  setBusy(false, msg.pending ? msg.note : msg.error ? "failed" : `done (${msg.finish || "ended"})`);
}

async function send(text) {
  const c = conv;
  const user = { role: "user", content: text };
  const msg = { role: "assistant", content: "", pending: { transport: $("transport").value, sent: false } };
  const body = { uid: 1, message: text, history: historyOf(c), on_disconnect: "finish" };
  if ($("model").value) body.model = msg.model = $("model").value;
  if (!c.messages.length) c.title = titleOf(text);
  c.messages.push(user, msg);
  cache.set(c.id, c);
  store.save(c);
  if (c === conv) { append(user); append(msg); toBottom(); }
  renderList();
  await run(c, msg, body);
}

// Every answer left streaming (by a reload, a closed tab), picked up where it was.
async function resumeAll() {
  for (const item of store.list()) {
    const c = getConv(item.id);
    const msg = c && c.messages[c.messages.length - 1];
    if (!msg || !msg.pending || running) continue;
    delete msg.note;
    if (c === conv) draw(msg);
    await run(c, msg, null);
  }
}

$("chat").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("message").value.trim();
  if (!text || running) return;
  if (authRequired && !signedIn) {  // the text stays in the box for after signing in
    needKey("This server needs an API key: sign in to chat.");
    $("status").textContent = "Sign in first.";
    $("api-key").focus();
    return;
  }
  $("message").value = "";
  send(text);
});

// Enter sends, Shift+Enter is a new line; Enter that ends an input method's composition does neither.
$("message").addEventListener("keydown", (e) => {
  if (e.key !== "Enter" || e.shiftKey || e.isComposing || e.keyCode === 229) return;
  e.preventDefault();
  $("chat").requestSubmit();
});

$("stop").addEventListener("click", () => {
  if (!running || !running.ctl.stop) return;
  $("stop").disabled = true;
  running.ctl.stop();
});

// ---- models ------------------------------------------------------------------------------

async function loadModels() {
  const picker = $("model");
  let ids = [];
  if (!authRequired || signedIn) {
    try {
      const resp = await fetch("/v1/models");
      if (resp.ok) ids = (await resp.json()).data.map((m) => m.id);
    } catch (e) { /* offline: the server's default model */ }
  }
  picker.replaceChildren(new Option("default", ""), ...ids.map((id) => new Option(id, id)));
  const wanted = localStorage.getItem(MODEL_KEY) || "";
  picker.value = ids.includes(wanted) ? wanted : "";
}

$("model").addEventListener("change", () => localStorage.setItem(MODEL_KEY, $("model").value));

// ---- signing in and out ------------------------------------------------------------------
// With keys, the page trades one once for an HttpOnly session cookie (POST /api/session); the
// key itself is never stored by the page. fetch, EventSource and WebSocket send the cookie.

function needKey(why) {
  $("auth").hidden = false;
  $("sign-out").hidden = true;
  $("auth-status").textContent = why;
}

function signedInAs(name) {
  signedIn = true;
  $("auth").hidden = true;
  $("sign-out").hidden = false;
  $("auth-status").textContent = `Signed in as ${name}.`;
}

$("auth").addEventListener("submit", async (e) => {
  e.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  const resp = await fetch("/api/session", { method: "POST", headers: { Authorization: `Bearer ${key}` } })
    .catch(() => null);
  const body = resp ? await resp.json().catch(() => ({})) : {};
  if (!resp || !resp.ok) {
    $("auth-status").textContent = !resp ? "The server did not answer: try again."
      : resp.status === 401 ? "That API key is invalid: check it and try again."
        : (body.error && body.error.message) || `The server refused to sign you in (HTTP ${resp.status}).`;
    return;
  }
  $("api-key").value = "";
  signedInAs(body.client);
  await loadModels();
  resumeAll();
});

$("sign-out").addEventListener("click", async () => {
  await fetch("/api/session", { method: "DELETE" }).catch(() => null);  // a 401: already signed out
  signedIn = false;
  needKey("Signed out. Enter an API key to sign in again.");
  loadModels();
});

// ---- the EventSource demo ----------------------------------------------------------------

$("es-start").addEventListener("click", () => {
  const out = $("es-out");
  if (authRequired && !signedIn) {
    out.textContent = "Sign in first: an EventSource cannot send an API key, so it needs the session "
      + "cookie that signing in sets.";
    return;
  }
  out.textContent = "";
  let got = false;
  const es = new EventSource("/stream");
  es.onmessage = (ev) => { got = true; out.textContent += ev.data; };
  es.addEventListener("end", () => es.close());
  es.addEventListener("error", async () => {
    if (es.readyState !== EventSource.CLOSED) return;  // it reconnects by itself
    es.close();
    if (got) return;
    // An EventSource tells no status: ask a request that starts nothing (a HEAD /stream would run
    // the stream's view and start one), as refusedWords does.
    const status = await fetch("/v1/models", { method: "GET" }).then((r) => r.status, () => 0);
    if (status === 401) { signedIn = false; needKey("Your session has ended: sign in again to go on."); }
    out.textContent = status === 401 ? "The stream was refused: your session has ended, sign in again."
      : status >= 400 ? `The stream was refused (HTTP ${status}).`
      : status ? "The stream could not be opened." : "The server did not answer.";
  });
});

// ---- start -------------------------------------------------------------------------------

window.addEventListener("pagehide", () => store.flush());
document.addEventListener("visibilitychange", () => { if (document.hidden) store.flush(); });
window.addEventListener("storage", (e) => {  // another tab of this page changed the conversations
  if (Store.concerns(e)) renderList();
  if (conv && Store.concerns(e, conv.id) && !(running && running.conv === conv)) {
    cache.delete(conv.id);
    show(getConv(conv.id) || store.create());
  }
});

if (authRequired) {
  if (signedIn) signedInAs(document.body.dataset.sessionClient);
  else needKey("This server needs an API key to chat.");
}
show(getConv(store.current) || getConv(store.list()[0]?.id) || store.create());
loadModels();
if (!authRequired || signedIn) resumeAll();
else conv.messages.filter((m) => m.pending).forEach((m) => { m.note = "Sign in to see the rest of this answer."; draw(m); });
