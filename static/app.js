// streamapp demo page: fetch + ReadableStream for POST /api/chat, EventSource for GET /stream.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];
let current = null; // {streamId, controller}

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

async function readStream(response, out, state) {
  // A streaming TextDecoder keeps a multi-byte character split across chunks whole.
  const reader = response.body.pipeThrough(new TextDecoderStream("utf-8")).getReader();
  const feed = sseParser((ev) => {
    state.lastEventId = ev.id || state.lastEventId;
    const payload = JSON.parse(ev.data);
    if (ev.event === "stream") { state.streamId = payload.stream_id; return; }
    if (ev.event === "error") { state.error = payload.message; return; }
    if (payload.is_end) { state.finish = payload.finish_reason; return; }
    if (payload.reasoning !== undefined) {
      state.reasoning += payload.reasoning;
      part(out, "reasoning").textContent = state.reasoning; // text, never HTML
      return;
    }
    if (payload.tool_call) {
      const call = payload.tool_call;
      const seen = state.tools[call.index] || (state.tools[call.index] = { name: "", args: "" });
      seen.name = call.function.name || seen.name;
      seen.args += call.function.arguments || "";
      part(out, "tools").textContent = state.tools.map((t) => `${t.name}(${t.args})`).join("\n");
      return;
    }
    state.text += payload.delta;
    part(out, "answer").textContent = state.text;
    out.dataset.chunks = String(Number(out.dataset.chunks || 0) + 1);
  });
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    feed(value);
  }
}

async function send(message) {
  const provider = $("provider").value;
  const body = { uid: 1, message, history: history.slice() };
  if (provider) body.provider = provider;
  bubble("user", message);
  const out = bubble("assistant", "");
  const state = { text: "", reasoning: "", tools: [], streamId: null, lastEventId: null, finish: null,
                  error: null, controller: new AbortController() };
  current = state;
  $("stop").disabled = false;
  $("send").disabled = true;
  $("status").textContent = "streaming…";
  try {
    let url = "/api/chat";
    for (let attempt = 0; attempt < 5 && !state.finish && !state.error; attempt++) {
      if (attempt > 0) url = `/api/streams/${state.streamId}?last_event_id=${encodeURIComponent(state.lastEventId)}`;
      const resp = attempt === 0
        ? await fetch(url, { method: "POST", headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
                             body: JSON.stringify(body), signal: state.controller.signal })
        : await fetch(url, { signal: state.controller.signal });
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
    if (state.controller.signal.aborted) state.finish = "cancelled";
    else state.error = String(e);
  }
  if (state.error) { out.classList.add("error"); part(out, "answer").textContent = state.text + `\n[${state.error}]`; }
  history.push({ role: "user", content: message }, { role: "assistant", content: state.text });
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

$("stop").addEventListener("click", async () => {
  if (!current) return;
  $("stop").disabled = true;
  if (!current.streamId) {
    // No stream id yet (the first token has not come): leaving stops it server-side.
    current.controller.abort();
    return;
  }
  await fetch(`/api/streams/${current.streamId}/cancel`, { method: "POST" });
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
