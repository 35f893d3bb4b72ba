// The stream inspector: one EventSource for the live table (GET /api/streams/live), one for the
// stream being watched (GET /api/streams/<id>/watch), cancel through POST /api/streams/<id>/cancel.
// Everything shown is text (textContent), never HTML: keys, models and answers come from clients.
"use strict";

const $ = (id) => document.getElementById(id);
const viewer = document.body.dataset.viewer;

// -- signing in (a browser without a session, or with a key that is not admin) -------------
if (viewer !== "admin") {
  $("auth").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const status = $("auth-status");
    status.textContent = "Signing in…";
    let resp;
    try {
      resp = await fetch("/api/session", {
        method: "POST", headers: { Authorization: `Bearer ${$("api-key").value}` },
      });
    } catch (err) {
      status.textContent = "The server could not be reached.";
      return;
    }
    if (resp.status === 401) {
      status.textContent = "That key is not known to this server.";
      return;
    }
    if (!resp.ok) {
      status.textContent = `Signing in failed (${resp.status}).`;
      return;
    }
    $("api-key").value = "";
    location.reload();
  });
} else {
  startInspector();
}

function startInspector() {
  const rows = new Map(); // stream id -> row, as the server sent it
  let offset = 0; // the server's clock minus ours, in seconds
  let sortKey = "started";
  let sortDir = -1;
  let watched = null; // { sid, source }

  const serverNow = () => Date.now() / 1000 + offset;

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "";
    if (s < 0) s = 0;
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 10) return `${s.toFixed(1)} s`;
    if (s < 120) return `${Math.round(s)} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    return `${Math.round(s / 3600)} h`;
  }

  // Usage in short: its token counts, and where they came from (the whole record is in the
  // stream's details); a shape of its own is shown as its plain values.
  const usageText = (u) => {
    if (u === null || u === undefined) return "";
    if (typeof u !== "object") return String(u);
    const parts = [];
    for (const [k, v] of Object.entries(u)) {
      if (k.endsWith("_tokens") && v !== null && typeof v !== "object") parts.push(`${k.slice(0, -7)} ${v}`);
    }
    if (!parts.length) {
      for (const [k, v] of Object.entries(u)) if (v !== null && typeof v !== "object") parts.push(`${k} ${v}`);
      return parts.join(", ");
    }
    return parts.join(", ") + (typeof u.source === "string" ? ` (${u.source})` : "");
  };

  const plain = (v) => (typeof v === "object" ? JSON.stringify(v) : String(v));

  // Upstream attempts as routing records them ({upstream, model, outcome, status, ms...}), in
  // words; any other shape as it is.
  const attemptsText = (list) => {
    if (!Array.isArray(list)) return plain(list);
    return list.map((a) => {
      if (a === null || typeof a !== "object") return plain(a);
      const what = [a.upstream, a.model].filter(Boolean).join(" ");
      const how = [a.outcome, a.status, typeof a.ms === "number" ? `${Math.round(a.ms)} ms` : ""];
      return `${what}: ${how.filter((x) => x !== "" && x !== null && x !== undefined).join(" ")}`;
    }).join(" → ");
  };

  const upstreamText = (r) => {
    const parts = [r.model || r.provider || ""];
    if (r.upstream) parts.push(`@ ${plain(r.upstream)}`);
    if (Array.isArray(r.attempts) && r.attempts.length > 1) parts.push(`(${r.attempts.length} attempts)`);
    return parts.join(" ");
  };

  function sinceLast(r) {
    if (r.last_event_at === null || r.last_event_at === undefined) return null;
    return (r.ended ?? serverNow()) - r.last_event_at;
  }

  // The two cells that move with the clock alone: the age, and the time since the last event.
  function clockTexts(r) {
    const age = r.started ? serverNow() - r.started : null;
    const last = r.state === "running" ? sinceLast(r) : null;
    return [fmtSeconds(age), last === null ? (r.state === "finished" ? "ended" : "") : `${fmtSeconds(last)} ago`];
  }

  function cells(r) {
    const [age, last] = clockTexts(r);
    const outcome = [r.outcome, r.finish_reason, r.error].filter(Boolean);
    return [
      ["stream_id", r.stream_id],
      ["process", r.process || ""],
      ["client", r.client || "–"],
      ["route", [r.route, r.format && r.format !== r.route ? `(${r.format})` : ""].join(" ").trim()],
      ["model", upstreamText(r)],
      ["state", r.state],
      ["age", age],
      ["ttft", r.ttft_s === null ? "" : fmtSeconds(r.ttft_s)],
      ["tokens", r.tokens === null ? "" : String(r.tokens)],
      ["tps", r.tokens_per_s === null ? "" : r.tokens_per_s.toFixed(1)],
      ["last", last],
      ["readers", String(r.readers)],
      ["resumes", String(r.resumes)],
      ["outcome", [...new Set(outcome)].join(" · ")],
      ["usage", usageText(r.usage)],
    ];
  }

  function passes(r) {
    const state = $("f-state").value;
    const key = $("f-key").value;
    const model = $("f-model").value;
    return (!state || r.state === state) && (!key || r.client === key) && (!model || r.model === model);
  }

  function compare(a, b) {
    const x = a[sortKey];
    const y = b[sortKey];
    if (x === y) return (b.started || 0) - (a.started || 0);
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * sortDir;
  }

  function fillSelect(select, values) {
    const chosen = select.value;
    const have = [...select.options].map((o) => o.value);
    const want = ["", ...[...values].sort()];
    if (chosen && !want.includes(chosen)) want.push(chosen); // a filter never vanishes under you
    if (have.join("\n") === want.join("\n")) return;
    select.replaceChildren(...want.map((v) => {
      const o = document.createElement("option");
      o.value = v;
      o.textContent = v || "all";
      return o;
    }));
    select.value = chosen;
  }

  // The table's rows are kept and updated in place, keyed by stream id: a diff changes only the
  // cells whose text changed and moves only the rows whose place changed, so a click, a text
  // selection or the pointer over a row survives the live updates.
  const body = $("streams").tBodies[0];
  const trs = new Map(); // stream id -> its <tr>
  const tds = new WeakMap(); // <tr> -> its cells by column
  let shownRows = []; // the rows on screen, in order

  function setText(td, text) {
    if (td.textContent !== text) td.textContent = text;
  }

  function setTitle(td, title) {
    if (td.title !== title) td.title = title;
  }

  // A stream's row: made once, then only its cells' texts change.
  function rowElement(r) {
    let tr = trs.get(r.stream_id);
    if (tr) return tr;
    tr = document.createElement("tr");
    tr.dataset.sid = r.stream_id;
    const byName = new Map();
    for (const [name] of cells(r)) {
      const td = document.createElement("td");
      td.dataset.col = name;
      byName.set(name, td);
      tr.appendChild(td);
    }
    tds.set(tr, byName);
    trs.set(r.stream_id, tr);
    return tr;
  }

  // What moves with the clock alone: the age, the time since the last event, the stall mark.
  function fillClock(tr, r) {
    const [age, last] = clockTexts(r);
    const byName = tds.get(tr);
    setText(byName.get("age"), age);
    setText(byName.get("last"), last);
    const since = sinceLast(r);
    tr.classList.toggle("stalled", r.state === "running" && since !== null && since >= 5);
  }

  function fillRow(tr, r) {
    const byName = tds.get(tr);
    if (tr.dataset.state !== r.state) tr.dataset.state = r.state;
    for (const [name, text] of cells(r)) {
      if (name === "age" || name === "last") continue; // fillClock's
      const td = byName.get(name);
      setText(td, text);
      if (name === "process" || name === "usage") setTitle(td, text);
      if (name === "model") setTitle(td, r.attempts ? `${text}\n${attemptsText(r.attempts)}` : text);
    }
    fillClock(tr, r);
    tr.classList.toggle("selected", Boolean(watched && watched.sid === r.stream_id));
  }

  function render() {
    const all = [...rows.values()];
    fillSelect($("f-key"), new Set(all.map((r) => r.client).filter(Boolean)));
    fillSelect($("f-model"), new Set(all.map((r) => r.model).filter(Boolean)));
    shownRows = all.filter(passes).sort(compare);
    for (const sid of trs.keys()) if (!rows.has(sid)) trs.delete(sid); // gone from the table
    let next = body.firstChild;
    for (const r of shownRows) {
      const tr = rowElement(r);
      fillRow(tr, r);
      if (tr === next) next = next.nextSibling;
      else body.insertBefore(tr, next); // only a row whose place changed moves
    }
    while (next) { // rows filtered out or gone
      const after = next.nextSibling;
      next.remove();
      next = after;
    }
    const running = all.filter((r) => r.state === "running").length;
    $("counts").textContent = `${shownRows.length} shown of ${all.length} · ${running} running`;
    $("empty").hidden = all.length > 0;
    if (watched) showMeta(rows.get(watched.sid));
  }

  // Each second the age and "last event" cells move on (nothing else changes between diffs).
  function tick() {
    for (const r of shownRows) {
      const tr = trs.get(r.stream_id);
      if (tr) fillClock(tr, r);
    }
  }

  // One listener for every row, present and future.
  body.addEventListener("click", (ev) => {
    const tr = ev.target instanceof Element ? ev.target.closest("tr") : null;
    if (tr && tr.parentNode === body && tr.dataset.sid) watch(tr.dataset.sid);
  });

  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.addEventListener("click", () => {
      if (sortKey === th.dataset.sort) sortDir = -sortDir;
      else { sortKey = th.dataset.sort; sortDir = th.classList.contains("num") ? -1 : 1; }
      for (const other of document.querySelectorAll("th[data-sort]")) other.removeAttribute("aria-sort");
      th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
      render();
    });
  }
  for (const id of ["f-state", "f-key", "f-model"]) $(id).addEventListener("change", render);

  // -- the live table: one EventSource, a snapshot then diffs ---------------------------
  const table = new EventSource("/api/streams/live");
  table.addEventListener("snapshot", (ev) => {
    const msg = JSON.parse(ev.data);
    offset = msg.now - Date.now() / 1000;
    rows.clear();
    for (const r of msg.streams) rows.set(r.stream_id, r);
    $("link").textContent = "live";
    render();
  });
  table.addEventListener("diff", (ev) => {
    const msg = JSON.parse(ev.data);
    offset = msg.now - Date.now() / 1000;
    for (const r of msg.upsert) rows.set(r.stream_id, r);
    for (const sid of msg.remove) rows.delete(sid);
    render();
  });
  table.addEventListener("problem", (ev) => {
    $("link").textContent = `the store fails: ${JSON.parse(ev.data).message}`;
  });
  table.onerror = () => {
    $("link").textContent = table.readyState === EventSource.CLOSED
      ? "disconnected (the session may have expired: reload the page)" : "reconnecting…";
  };
  setInterval(tick, 1000); // ages and "last event" move on between diffs

  // -- one stream, live -------------------------------------------------------------------
  function showMeta(r) {
    if (!r) return;
    const items = [["process", r.process], ["key", r.client], ["route", r.route], ["format", r.format], ["provider", r.provider],
      ["model", r.model], ["upstream", r.upstream], ["attempts", r.attempts],
      ["on disconnect", r.on_disconnect], ["state", r.state], ["events", r.events],
      ["readers", r.readers], ["resumes", r.resumes], ["outcome", r.outcome],
      ["finish reason", r.finish_reason], ["error", r.error], ["usage", r.usage]];
    $("d-meta").replaceChildren(...items.filter(([, v]) => v !== null && v !== undefined && v !== "")
      .flatMap(([k, v]) => {
        const dt = document.createElement("dt");
        dt.textContent = k;
        const dd = document.createElement("dd");
        dd.textContent = k === "attempts" ? attemptsText(v) : plain(v);
        return [dt, dd];
      }));
    $("d-cancel").disabled = r.state !== "running";
  }

  function stopWatching() {
    if (watched) watched.source.close();
    watched = null;
  }

  function watch(sid) {
    stopWatching();
    $("detail").hidden = false;
    $("d-sid").textContent = sid;
    $("d-status").textContent = "";
    const answer = $("d-answer");
    const reasoning = $("d-reasoning");
    const tools = $("d-tools");
    answer.textContent = "";
    answer.dataset.chunks = "0";
    reasoning.textContent = "";
    reasoning.hidden = true;
    tools.textContent = "";
    tools.hidden = true;
    $("d-end").textContent = "";
    $("detail").dataset.done = "false";
    const calls = []; // by index: { name: its Text node, args: the element its fragments go into }
    // A tool call's line, "name(arguments)", put in index order; fragments are appended to it.
    const toolLine = (index) => {
      const line = document.createElement("span");
      line.className = "call";
      line.dataset.index = String(index);
      const name = document.createTextNode("");
      const args = document.createElement("span");
      line.append(name, "(", args, ")");
      const after = [...tools.children].find((el) => Number(el.dataset.index) > index);
      tools.insertBefore(line, after || null);
      return { name, args };
    };
    const source = new EventSource(`/api/streams/${encodeURIComponent(sid)}/watch`);
    watched = { sid, source };
    showMeta(rows.get(sid));
    const end = (text) => {
      $("d-end").textContent = text;
      $("detail").dataset.done = "true";
      source.close();
    };
    source.onmessage = (ev) => {
      const data = JSON.parse(ev.data);
      if ("delta" in data) {
        answer.append(data.delta); // a text node each: appending stays linear in the answer's length
        answer.dataset.chunks = String(Number(answer.dataset.chunks) + 1);
      } else if ("reasoning" in data) {
        reasoning.hidden = false;
        reasoning.append(data.reasoning);
      } else if ("tool_call" in data) {
        const call = data.tool_call;
        const seen = calls[call.index] || (calls[call.index] = toolLine(call.index));
        if (call.function.name) seen.name.data = call.function.name;
        if (call.function.arguments) seen.args.append(call.function.arguments);
        tools.hidden = false;
      } else if (data.is_end) {
        const usage = usageText(data.usage);
        end(`ended: ${data.finish_reason}${usage ? ` · usage: ${usage}` : ""}`);
      }
    };
    source.addEventListener("error", (ev) => {
      if (ev.data) { // the stream's own error event
        const data = JSON.parse(ev.data);
        end(`failed: ${data.code}: ${data.message}`);
      } else if (source.readyState === EventSource.CLOSED && $("detail").dataset.done !== "true") {
        end("no longer available");
      }
    });
    render();
  }

  $("d-close").addEventListener("click", () => {
    stopWatching();
    $("detail").hidden = true;
    render();
  });

  $("d-cancel").addEventListener("click", async () => {
    if (!watched) return;
    const sid = watched.sid;
    if (!window.confirm(`Cancel stream ${sid}? Its generation stops and its upstream request is closed.`)) return;
    const status = $("d-status");
    status.textContent = "cancelling…";
    try {
      const resp = await fetch(`/api/streams/${encodeURIComponent(sid)}/cancel`, { method: "POST" });
      const body = await resp.json();
      status.textContent = resp.ok ? `cancel: ${body.status}` : `cancel refused: ${body.error.message}`;
    } catch (err) {
      status.textContent = "the server could not be reached";
    }
  });
}
