// One answer's stream, by SSE (fetch + ReadableStream on POST /api/chat) or over one WebSocket to
// /ws: started, or resumed from the point its message keeps in `msg.pending` (after a dropped
// connection, a reload or a reopened tab). Every event updates the message (text and resume point
// together) and then calls `ctl.changed()`; the stream is over when `msg.pending` is gone.
"use strict";

// A request the server answered with an error before any event: `status` (0 on a WebSocket),
// its `code` and message.
export class Refused extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// SSE parsing per WHATWG: CR, LF or CRLF line ends; "data:" lines joined by "\n".
export function sseParser(onEvent) {
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

// One event of an answer, whichever transport brought it.
function apply(msg, kind, value) {
  if (kind === "delta") {
    msg.content += value;
    msg.chunks = (msg.chunks || 0) + 1;
  } else if (kind === "reasoning") {
    msg.reasoning = (msg.reasoning || "") + value;
  } else if (kind === "tool_call") {
    msg.tools = msg.tools || [];
    const seen = msg.tools[value.index] || (msg.tools[value.index] = { name: "", args: "" });
    seen.name = (value.function && value.function.name) || seen.name;
    seen.args += (value.function && value.function.arguments) || "";
  }
}

function end(msg, finish, error) {
  if (finish) msg.finish = finish;
  if (error) msg.error = error;
  delete msg.pending;
}

const GONE = "The rest of this answer is no longer on the server (it expired or the server restarted).";
const TOO_EARLY = "The page closed before the server named this answer's stream: send the message again.";

async function readSse(resp, msg, ctl) {
  // A streaming TextDecoder keeps a multi-byte character split across chunks whole.
  const reader = resp.body.pipeThrough(new TextDecoderStream("utf-8")).getReader();
  const p = msg.pending;
  const feed = sseParser((ev) => {
    const payload = JSON.parse(ev.data);
    if (ev.id) p.lastEventId = ev.id;  // with the text it follows, in one step
    if (ev.event === "stream") p.streamId = payload.stream_id;
    else if (ev.event === "error") end(msg, null, payload.message || payload.code);
    else if (payload.is_end) end(msg, payload.finish_reason);
    else if (payload.reasoning !== undefined) apply(msg, "reasoning", payload.reasoning);
    else if (payload.tool_call) apply(msg, "tool_call", payload.tool_call);
    else apply(msg, "delta", payload.delta);
    ctl.changed();
  });
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    feed(value);
  }
}

async function refusal(resp) {
  const body = await resp.json().catch(() => ({}));
  const err = body.error || {};
  return new Refused(resp.status, err.code || "", err.message || `HTTP ${resp.status}`);
}

const pause = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

// SSE: POST /api/chat with the body, or with `Last-Event-ID` to resume (after a drop, a reload).
export async function sseAnswer(msg, body, ctl) {
  const controller = new AbortController();
  const p = msg.pending;
  ctl.stop = () => {
    if (p.streamId) {  // the end (cancelled) comes through the stream
      fetch(`/api/streams/${p.streamId}/cancel`, { method: "POST" }).catch(() => controller.abort());
    } else controller.abort();  // not started yet: leaving stops it server-side
  };
  let failures = 0;
  while (msg.pending) {
    const resume = p.lastEventId || (p.streamId ? `${p.streamId}-0` : null);
    if (!resume && (p.sent || !body)) return end(msg, null, TOO_EARLY);
    const headers = { Accept: "text/event-stream" };
    if (resume) headers["Last-Event-ID"] = resume;
    else headers["Content-Type"] = "application/json";
    p.sent = true;
    let resp;
    try {
      resp = await fetch("/api/chat", { method: "POST", headers, signal: controller.signal,
                                        body: resume ? undefined : JSON.stringify(body) });
    } catch (e) {
      if (controller.signal.aborted) return end(msg, "cancelled");
      if (!resume) return end(msg, null, "The connection failed before the answer started: send it again.");
      if (++failures > 5) return end(msg, null, "The connection keeps failing: reload the page to try again.");
      await pause(500 * failures);
      continue;
    }
    if (resp.status === 204) return end(msg, resume ? null : "cancelled", resume ? GONE : null);
    if (!resp.ok) throw await refusal(resp);
    p.streamId = resp.headers.get("X-Stream-Id") || p.streamId;
    ctl.changed(true);
    const before = p.lastEventId;
    try {
      await readSse(resp, msg, ctl);
    } catch (e) {
      if (controller.signal.aborted) return end(msg, "cancelled");
    }
    failures = p.lastEventId === before ? failures + 1 : 0;  // dropped: resume below
    if (msg.pending && failures > 5) return end(msg, null, "The connection keeps failing: reload the page to try again.");
  }
}

// WebSocket: one socket to /ws carries every chat, one at a time; opened on first use and reopened
// when it has closed. Its messages go to the running answer's handlers.
let socket = null;
let handlers = null;

function openSocket() {
  if (socket && socket.readyState <= WebSocket.OPEN) return socket.opened;
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.opened = new Promise((resolve, reject) => {
    ws.addEventListener("open", () => { ws.wasOpen = true; resolve(ws); });
    // A refused handshake (no key, wrong Origin) shows only as a close before open.
    ws.addEventListener("close", (e) => reject(new Refused(0, "socket_refused", `could not open /ws (close code ${e.code})`)));
  });
  ws.addEventListener("message", (e) => { if (handlers) handlers.message(JSON.parse(e.data)); });
  ws.addEventListener("close", (e) => { if (ws.wasOpen && handlers) handlers.close(e); });
  socket = ws;
  return ws.opened;
}

export async function wsAnswer(msg, body, ctl) {
  const p = msg.pending;
  let ws = await openSocket();  // a refusal (Refused) goes to the caller
  let resumes = 0;
  ctl.stop = () => ws.send(JSON.stringify({ type: "stop" }));
  const follow = () => JSON.stringify({ type: "resume", stream_id: p.streamId, last_seq: p.lastSeq || 0 });
  try {
    await new Promise((resolve, reject) => {
      handlers = {
        message(m) {
          if (m.seq !== undefined) p.lastSeq = m.seq;
          if (m.type === "start") { p.streamId = m.stream_id; ctl.changed(true); return; }
          if (m.type === "delta") apply(msg, "delta", m.content);
          else if (m.type === "reasoning") apply(msg, "reasoning", m.content);
          else if (m.type === "tool_call") apply(msg, "tool_call", m.tool_call);
          else if (m.type === "end") end(msg, m.finish_reason);
          else if (m.type === "error" && m.code === "not_found" && p.streamId) end(msg, null, GONE);
          else if (m.type === "error" && m.seq === undefined && m.code !== "no_active_stream") {
            reject(new Refused(0, m.code, m.message));  // refused in-band; the socket stays
            return;
          } else if (m.type === "error" && m.seq !== undefined) end(msg, null, m.message);
          ctl.changed();
          if (!msg.pending) resolve();
        },
        // A closed socket is a disconnect, not a stop: follow the stream on a new one.
        async close(e) {
          if (!p.streamId || ++resumes > 3) { end(msg, null, `The connection closed (code ${e.code}).`); resolve(); return; }
          try {
            ws = await openSocket();
            ws.send(follow());
          } catch (err) { end(msg, null, "The connection closed and could not be opened again."); resolve(); }
        },
      };
      if (p.streamId) ws.send(follow());
      else if (p.sent || !body) { end(msg, null, TOO_EARLY); resolve(); }
      else { p.sent = true; ws.send(JSON.stringify({ type: "chat", ...body })); }
    });
  } finally {
    handlers = null;
  }
}
