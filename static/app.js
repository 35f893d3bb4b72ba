// streamapp demo page: fetch + ReadableStream for POST /api/chat or one WebSocket to /ws,
// EventSource for GET /stream.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];
let current = null; // the running chat's state (one at a time)

// SSE parsing per WHATWG: CR, LF or CRLF line ends; "data:" lines joined by "\n".
function sseParser(onEvent) {
  let buffer = "";
  let data = [];
  let event = "";
  let id = null;
  return (text) => {
    buffer += text;
    // A CR at the very end may be the first half of a CRLF: keep it for the next chunk.
    const held = buffer.endsWith("\r") ? "\r" : "";
    const lines = (held ? buffer.slice(0, -1) : buffer).split(/\r\n|\r|\n/);
    buffer = lines.pop() + held; // an incomplete line stays
    for (const line of lines) {
      if (line === "") {
        if (data.length) onEvent({ event: event || "message", data: data.join("\n"), id });
        data = []; event = "";
        continue;
      }
      if (line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? "" : line.slice(i + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") data.push(value);
      else if (field === "event") event = value;
      else if (field === "id" && !value.includes("\0")) id = value;
    }
  };
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("log").appendChild(div);
  return div;
}

// An assistant bubble: the model's reasoning (when it sends any) apart, above the answer.
function part(out, cls) {
  let el = out.querySelector(`.${cls}`);
  if (!el) {
    el = document.createElement("div");
    el.className = cls;
    if (cls === "reasoning") out.prepend(el); else out.appendChild(el);
  }
  return el;
}

// The events of one answer, whichever transport brought them; text only, never HTML.
function addDelta(out, state, text) {
  state.text += text;
  part(out, "answer").textContent = state.text;
  out.dataset.chunks = String(Number(out.dataset.chunks || 0) + 1);
}

function addReasoning(out, state, text) {
  state.reasoning += text;
  part(out, "reasoning").textContent = state.reasoning;
}

function addToolCall(out, state, call) {
  const seen = state.tools[call.index] || (state.tools[call.index] = { name: "", args: "" });
  seen.name = call.function.name || seen.name;
  seen.args += call.function.arguments || "";
  part(out, "tools").textContent = state.tools.map((t) => `${t.name}(${t.args})`).join("\n");
}

async function readStream(response, out, state) {
  // A streaming TextDecoder keeps a multi-byte character split across chunks whole.
  const reader = response.body.pipeThrough(new TextDecoderStream("utf-8")).getReader();
  const feed = sseParser((ev) => {
    state.lastEventId = ev.id || state.lastEventId;
    const payload = JSON.parse(ev.data);
    if (ev.event === "stream") state.streamId = payload.stream_id;
    else if (ev.event === "error") state.error = payload.message;
    else if (payload.is_end) state.finish = payload.finish_reason;
    else if (payload.reasoning !== undefined) addReasoning(out, state, payload.reasoning);
    else if (payload.tool_call) addToolCall(out, state, payload.tool_call);
    else addDelta(out, state, payload.delta);
  });
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    feed(value);
  }
}

// SSE mode: POST /api/chat, resumed with Last-Event-ID if the connection drops.
async function chatSse(body, out, state) {
  const controller = new AbortController();
  state.stop = () => {
    // No stream id yet (the first token has not come): leaving stops it server-side.
    if (!state.streamId) controller.abort();
    else fetch(`/api/streams/${state.streamId}/cancel`, { method: "POST" });
  };
  try {
    let url = "/api/chat";
    for (let attempt = 0; attempt < 5 && !state.finish && !state.error; attempt++) {
      if (attempt > 0) url = `/api/streams/${state.streamId}?last_event_id=${encodeURIComponent(state.lastEventId)}`;
      const resp = attempt === 0
        ? await fetch(url, { method: "POST", headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
                             body: JSON.stringify(body), signal: controller.signal })
        : await fetch(url, { signal: controller.signal });
      if (resp.status === 204) break;
      if (resp.status === 401) needKey("Your session has expired or this server needs an API key.");
      if (!resp.ok) {
        const err = await resp.json().catch(() => ({}));
        state.error = (err.error && err.error.message) || `HTTP ${resp.status}`;
        break;
      }
      state.streamId = resp.headers.get("X-Stream-Id") || state.streamId;
      try { await readStream(resp, out, state); } catch (e) { /* dropped: resume below */ }
      if (!state.lastEventId) break;
    }
  } catch (e) {
    if (controller.signal.aborted) state.finish = "cancelled";
    else state.error = String(e);
  }
}

// WebSocket mode: one socket to /ws carries every chat, one at a time; opened on first use and
// reopened when it has closed. Its messages go to the running chat (`current`), if any.
let socket = null;

function openSocket() {
  if (socket && socket.readyState <= WebSocket.OPEN) return socket.opened;
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.opened = new Promise((resolve, reject) => {
    ws.addEventListener("open", () => { ws.wasOpen = true; resolve(ws); });
    // A refused handshake (no key, wrong Origin) shows only as a close before open.
    ws.addEventListener("close", (e) => reject(new Error(`could not open /ws (close code ${e.code})`)));
  });
  ws.addEventListener("message", (e) => { if (current && current.onMessage) current.onMessage(JSON.parse(e.data)); });
  ws.addEventListener("close", (e) => { if (ws.wasOpen && current && current.onClose) current.onClose(e); });
  socket = ws;
  return ws.opened;
}

async function chatWs(body, out, state) {
  let ws;
  try {
    ws = await openSocket();
  } catch (e) {
    if (document.body.dataset.authRequired === "true") needKey("The WebSocket was refused: is your session valid?");
    state.error = e.message;
    return;
  }
  let resumes = 0;
  state.lastSeq = 0;
  state.stop = () => ws.send(JSON.stringify({ type: "stop" }));
  await new Promise((resolve) => {
    state.onMessage = (msg) => {
      if (msg.seq !== undefined) state.lastSeq = msg.seq;
      if (msg.type === "start") state.streamId = msg.stream_id;
      else if (msg.type === "delta") addDelta(out, state, msg.content);
      else if (msg.type === "reasoning") addReasoning(out, state, msg.content);
      else if (msg.type === "tool_call") addToolCall(out, state, msg.tool_call);
      else if (msg.type === "end") { state.finish = msg.finish_reason; resolve(); }
      // A stop that crossed the end on the wire has nothing left to stop: not worth showing.
      else if (msg.type === "error" && msg.code !== "no_active_stream") {
        state.error = `${msg.code}: ${msg.message}`;
        resolve();
      }
    };
    // A closed socket is a disconnect, not a stop: follow the stream on a new one from the last seq.
    state.onClose = async (e) => {
      if (!state.streamId || ++resumes > 3) { state.error = `the socket closed (code ${e.code})`; resolve(); return; }
      try {
        ws = await openSocket();
        ws.send(JSON.stringify({ type: "resume", stream_id: state.streamId, last_seq: state.lastSeq }));
      } catch (err) { state.error = err.message; resolve(); }
    };
    ws.send(JSON.stringify({ type: "chat", ...body }));
  });
}

async function send(message) {
  const provider = $("provider").value;
  const body = { uid: 1, message, history: history.slice() };
  if (provider) body.provider = provider;
  bubble("user", message);
  const out = bubble("assistant", "");
  const state = { text: "", reasoning: "", tools: [], streamId: null, lastEventId: null, finish: null, error: null };
  current = state;
  $("stop").disabled = false;
  $("send").disabled = true;
  $("status").textContent = "streaming…";
  await ($("transport").value === "ws" ? chatWs : chatSse)(body, out, state);
  if (state.error) { out.classList.add("error"); part(out, "answer").textContent = state.text + `\n[${state.error}]`; }
  else if (state.finish === "cancelled") part(out, "note").textContent = "(stopped)";
  // A refused message (nothing streamed) stays out of the history, or it would be refused again.
  if (!state.error || state.text) {
    history.push({ role: "user", content: message }, { role: "assistant", content: state.text });
  }
  out.dataset.done = "true";
  $("status").textContent = state.error ? "failed" : `done (${state.finish || "ended"})`;
  $("stop").disabled = true;
  $("send").disabled = false;
  current = null;
}

$("chat").addEventListener("submit", (e) => {
  e.preventDefault();
  const message = $("message").value.trim();
  if (!message) return;
  $("message").value = "";
  send(message);
});

$("stop").addEventListener("click", () => {
  if (!current || !current.stop) return;
  $("stop").disabled = true;
  current.stop();
});

// API keys: when the server needs one, the page trades it once for an HttpOnly session cookie
// (POST /api/session); the key itself is never stored by the page. fetch and EventSource then
// send the cookie by themselves.
function needKey(why) {
  $("auth").hidden = false;
  $("auth-status").textContent = why;
}

$("auth").addEventListener("submit", async (e) => {
  e.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  const resp = await fetch("/api/session", { method: "POST", headers: { Authorization: `Bearer ${key}` } });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    $("auth-status").textContent = (body.error && body.error.message) || `HTTP ${resp.status}`;
    return;
  }
  $("api-key").value = "";
  $("auth").hidden = true;
  $("auth-status").textContent = `Signed in as ${body.client}.`;
});

if (document.body.dataset.authRequired === "true") {
  const who = document.body.dataset.sessionClient;
  if (who) $("auth-status").textContent = `Signed in as ${who}.`;
  else needKey("This server needs an API key.");
}

$("es-start").addEventListener("click", () => {
  const out = $("es-out");
  out.textContent = "";
  const es = new EventSource("/stream");
  es.onmessage = (ev) => { out.textContent += ev.data; };
  es.addEventListener("end", () => es.close());
  es.addEventListener("error", () => { if (es.readyState === EventSource.CLOSED) es.close(); });
});
