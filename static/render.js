// Model output as safe HTML: Markdown by the vendored `marked`, then the vendored `DOMPurify`.
// Raw HTML in the output is shown as text (never parsed), and the sanitizer allows only the
// elements Markdown makes, links only to http(s) and mailto, no images (a same-origin image URL
// would be a GET with the user's cookie), no style and no event handler: model output never
// runs script, even where the page's CSP is not enforced.
"use strict";

const { marked, DOMPurify } = window;

const escapeHtml = (s) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

marked.use({
  gfm: true,
  renderer: {
    html({ text, block }) { return block ? `<p>${escapeHtml(text)}</p>` : escapeHtml(text); },
    image({ href, text }) { return `<a href="${escapeHtml(href || "")}">${escapeHtml(text || href || "image")}</a>`; },
  },
});

const PURIFY = {
  ALLOWED_TAGS: ["a", "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s",
    "code", "pre", "blockquote", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td", "sup", "sub"],
  ALLOWED_ATTR: ["href", "title", "align", "start", "class"],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i,
  ALLOW_DATA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

// Only marked's own `language-*` class on code blocks: no model-chosen class can dress text up as
// the page's own parts (a user bubble, a status line).
DOMPurify.addHook("uponSanitizeAttribute", (node, data) => {
  if (data.attrName === "class" && !(node.nodeName === "CODE" && /^language-[\w+#.-]{1,40}$/.test(data.attrValue))) {
    data.keepAttr = false;
  }
});
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.nodeName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

// The Markdown `text` as a sanitized fragment, without the blank text nodes between blocks (so the
// answer's text is the model's text).
export function markdown(text) {
  const frag = DOMPurify.sanitize(marked.parse(text, { async: false }), PURIFY);
  for (const node of [...frag.childNodes]) {
    if (node.nodeType === Node.TEXT_NODE && !node.textContent.trim()) node.remove();
  }
  return frag;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

// One message's bubble. A user's text stays text; an assistant's answer is Markdown, its reasoning
// (collapsible) and tool calls apart; `update` redraws it from the message as it grows.
export function bubble(msg) {
  const div = el("div", `msg ${msg.role}`);
  if (msg.role === "user") {
    div.textContent = msg.content;
    return div;
  }
  const reasoning = el("details", "reasoning");
  reasoning.append(el("summary", "", "Reasoning"), el("div", "reasoning-text"));
  reasoning.hidden = true;
  reasoning.open = Boolean(msg.pending);  // open while it streams; closed when read again later
  div.append(reasoning, el("div", "tools"), el("div", "answer"), el("div", "note"));
  div.querySelector(".tools").hidden = true;
  div.querySelector(".note").hidden = true;
  update(div, msg);
  return div;
}

export function update(div, msg) {
  const reasoning = div.querySelector(".reasoning");
  if (msg.reasoning) {
    reasoning.hidden = false;
    reasoning.querySelector(".reasoning-text").textContent = msg.reasoning;
  }
  const tools = div.querySelector(".tools");
  if (msg.tools && msg.tools.length) {
    tools.hidden = false;
    tools.replaceChildren(...msg.tools.map((t) => {
      const call = el("div", "tool-call");
      call.append(el("span", "tool-label", "tool call"), el("code", "", `${t.name}(${t.args})`));
      return call;
    }));
  }
  if (msg.content !== div.rendered) {  // re-parsed once per frame at most, not per token
    div.querySelector(".answer").replaceChildren(markdown(msg.content));
    div.rendered = msg.content;
  }
  const note = div.querySelector(".note");
  const words = msg.error || msg.note || (msg.finish === "cancelled" ? "(stopped)" : "");
  note.hidden = !words;
  note.textContent = words;
  div.classList.toggle("error", Boolean(msg.error));
  div.dataset.chunks = String(msg.chunks || 0);
  div.dataset.done = msg.pending ? "false" : "true";
  div.setAttribute("aria-busy", msg.pending ? "true" : "false");
}
