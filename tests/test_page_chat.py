"""The demo page as a chat, in real headless Chromium against real gunicorn servers (the demo
provider echoes the message, so a message chooses the answer's Markdown): resume after a reload
or a reopened tab, conversations kept in the browser, Markdown rendered safely, the prompt box,
the layout, and signing in and out in words."""

from __future__ import annotations

import hashlib
import json
import re
from urllib.parse import urlsplit

import pytest
import requests

from streamapp.providers.demo import answer_for
from tests.conftest import ROOT

KEY = "sk-chat-81d3e0c2"
LONG = " ".join(f"word{i}" for i in range(150))  # ~190 tokens of answer
LAST_DONE = "() => [...document.querySelectorAll('.msg.assistant')].pop()?.dataset.done === 'true'"
CHUNKS_AT_LEAST = "(n) => Number([...document.querySelectorAll('.msg.assistant')].pop()?.dataset.chunks) >= n"
STATUS_SAYS = "(t) => document.querySelector('#auth-status').textContent.startsWith(t)"
STORED = """() => Object.keys(localStorage).filter((k) => k.startsWith('streamapp.chat.'))
    .map((k) => JSON.parse(localStorage.getItem(k)))"""


@pytest.fixture(scope="module")
def slow(start_server):
    """A memory-store server whose long answer takes several seconds."""
    return start_server(DEMO_DELAY_MS=25, HEADER_WAIT_S=0.2)


@pytest.fixture
def context(browser):
    context = browser.new_context()
    yield context
    context.close()


@pytest.fixture
def page(context):
    return context.new_page()


def send(page, text: str) -> None:
    page.fill("#message", text)
    page.click("#send")


def chat_posts(page) -> list[dict]:
    """Every POST /api/chat the page makes: its Last-Event-ID and body."""
    posts: list[dict] = []
    page.on("request", lambda r: posts.append({"resume": r.headers.get("last-event-id"), "body": r.post_data})
            if r.url.endswith("/api/chat") and r.method == "POST" else None)
    return posts


def the_answer(page) -> str:
    return page.locator(".msg.assistant .answer").last.text_content()


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_reload_mid_answer_continues_it_exactly(slow, context, transport) -> None:
    page = context.new_page()
    page.goto(slow.url)
    page.select_option("#transport", transport)
    send(page, LONG)
    page.wait_for_function(CHUNKS_AT_LEAST, arg=25, timeout=15000)
    posts = chat_posts(page)
    page.reload()
    kept = page.locator(".msg.assistant .answer").last.text_content()  # from the browser's storage
    full = answer_for([{"role": "user", "content": LONG}])
    assert len(kept) > 20 and full.startswith(kept) and kept != full
    page.wait_for_function(LAST_DONE, timeout=30000)
    assert the_answer(page) == full  # nothing lost, nothing doubled
    assert page.locator("#status").text_content() == "done (stop)"
    stored = page.evaluate(STORED)
    assert [m["content"] for m in stored[0]["messages"]] == [LONG, full]
    assert "pending" not in stored[0]["messages"][1]
    if transport == "sse":  # resumed through POST /api/chat with Last-Event-ID: no second generation
        assert len(posts) == 1 and posts[0]["body"] is None
        assert int(posts[0]["resume"].rsplit("-", 1)[1]) > 20  # from where the page was


def test_reload_mid_answer_resumes_on_any_worker_with_redis(start_server, redis_url, redis_prefix,
                                                           context) -> None:
    shared = start_server(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, WORKERS=2, DEMO_DELAY_MS=25)
    page = context.new_page()
    page.goto(shared.url)
    send(page, LONG)
    page.wait_for_function(CHUNKS_AT_LEAST, arg=25, timeout=15000)
    page.reload()
    page.wait_for_function(LAST_DONE, timeout=30000)
    assert the_answer(page) == answer_for([{"role": "user", "content": LONG}])
    assert page.locator("#status").text_content() == "done (stop)"


def test_closed_and_reopened_tab_picks_the_answer_up(slow, context) -> None:
    page = context.new_page()
    page.goto(slow.url)
    send(page, LONG)
    page.wait_for_function(CHUNKS_AT_LEAST, arg=25, timeout=15000)
    page.close()
    again = context.new_page()
    posts = chat_posts(again)
    again.goto(slow.url)
    again.wait_for_function(LAST_DONE, timeout=30000)
    assert the_answer(again) == answer_for([{"role": "user", "content": LONG}])
    assert [p["body"] for p in posts] == [None] and posts[0]["resume"]


MARKDOWN = """markdown

| name | count |
|---|---|
| apples | 3 |

- first item
- second item

```python
print("hi")
```

See [the docs](https://example.com/docs) and `inline code`."""


def test_markdown_renders_tables_code_lists_and_links(server, page) -> None:
    page.goto(server.url)
    send(page, MARKDOWN)
    page.wait_for_function(LAST_DONE, timeout=15000)
    answer = page.locator(".msg.assistant .answer").last
    assert answer.locator("table th").all_text_contents() == ["name", "count"]
    assert answer.locator("table td").all_text_contents() == ["apples", "3"]
    assert answer.locator("ul > li").all_text_contents() == ["first item", "second item"]
    assert answer.locator("pre > code.language-python").text_content() == 'print("hi")\n'
    link = answer.locator("a")
    assert link.text_content() == "the docs" and link.get_attribute("href") == "https://example.com/docs"
    assert link.get_attribute("rel") == "noopener noreferrer nofollow"
    assert link.get_attribute("target") == "_blank"
    assert answer.locator(":not(pre) > code").text_content() == "inline code"


def pick_model(page, model: str) -> None:
    page.wait_for_function("(m) => [...document.querySelectorAll('#model option')]"
                           ".some((o) => o.value === m)", arg=model)
    page.select_option("#model", model)


def test_tool_calls_are_shown(start_server, page) -> None:
    from tests.fake_upstream import TOOL_CALLS

    tools = start_server(OPENAI_MODEL="tools", HEADER_WAIT_S=0.2)
    page.goto(tools.url)
    pick_model(page, "openai/tools")
    send(page, "call the tools")
    page.wait_for_function(LAST_DONE, timeout=15000)
    calls = page.locator(".msg.assistant .tools .tool-call")
    shown = [re.fullmatch(r"tool call(\w+)\((.*)\)", t, re.S).groups() for t in calls.all_text_contents()]
    assert [(name, json.loads(args)) for name, args in shown] == \
        [(c["name"], c["arguments"]) for c in TOOL_CALLS]
    assert page.locator("#status").text_content() == "done (tool_calls)"


def test_reasoning_folds_and_is_kept(start_server, page) -> None:
    from tests.fake_upstream import REASONING

    thinking = start_server(OPENAI_MODEL="reasoning?tokens=4", HEADER_WAIT_S=0.2)
    page.goto(thinking.url)
    pick_model(page, "openai/reasoning?tokens=4")
    send(page, "think first")
    page.wait_for_function(LAST_DONE, timeout=15000)
    text = page.locator(".msg.assistant .reasoning-text")
    assert text.is_visible() and text.text_content() == "".join(REASONING)  # open as it streamed
    page.click(".msg.assistant .reasoning summary")
    assert not text.is_visible()
    page.reload()  # read again later: folded, and kept
    assert not text.is_visible()
    page.click(".msg.assistant .reasoning summary")
    assert text.is_visible() and text.text_content() == "".join(REASONING)


# Each would set window.__xss if it ran; the page is loaded with its CSP bypassed, so only the
# page's own rendering stands between the model's text and the script.
PAYLOADS = [
    "<script>window.__xss = 1</script>",
    '<img src=x onerror="window.__xss = 2">',
    "[click me](javascript:window.__xss=3)",
    '<a href="javascript:window.__xss=4">raw link</a>',
    '<svg onload="window.__xss = 5"></svg>',
    "![pic](javascript:window.__xss=6)",
    '<iframe srcdoc="<script>parent.__xss = 7</script>"></iframe>',
    '<p class="msg user">fake user bubble</p>',
]


def test_script_in_model_output_never_runs(server, browser) -> None:
    context = browser.new_context(bypass_csp=True)
    try:
        page = context.new_page()
        page.goto(server.url)
        # The control: in this page an inline handler does run when it reaches the DOM.
        page.evaluate("() => { const d = document.createElement('div'); document.body.append(d); "
                      "d.innerHTML = '<img src=x onerror=\"window.__control = 1\">'; }")
        page.wait_for_function("() => window.__control === 1")
        send(page, "payloads\n\n" + "\n\n".join(PAYLOADS))
        page.wait_for_function(LAST_DONE, timeout=15000)
        answer = page.locator(".msg.assistant .answer").last
        for link in answer.locator("a").all():
            link.click()  # a javascript: link would run here
        page.wait_for_function("() => document.querySelector('.msg.assistant') !== null")
        assert page.evaluate("window.__xss") is None
        assert answer.locator("script, img, svg, iframe, [onerror], [onload], .user").count() == 0
        hrefs = [a.get_attribute("href") for a in answer.locator("a").all()]
        assert all(h is None or h.startswith(("http:", "https:", "mailto:")) for h in hrefs), hrefs
        assert "<script>window.__xss = 1</script>" in answer.text_content()  # shown as text
        assert page.locator(".msg.user").count() == 1
    finally:
        context.close()


def test_enter_sends_and_shift_enter_makes_a_new_line(server, page) -> None:
    page.goto(server.url)
    page.click("#message")
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    assert page.locator("#message").input_value() == "line one\nline two"
    assert page.locator(".msg").count() == 0
    page.keyboard.press("Enter")
    page.wait_for_function(LAST_DONE, timeout=15000)
    assert page.locator(".msg.user").text_content() == "line one\nline two"
    assert page.locator("#message").input_value() == ""
    assert "line one\nline two" in the_answer(page)


def test_conversations_switch_survive_a_reload_and_delete(server, page) -> None:
    page.goto(server.url)
    send(page, "first chat")
    page.wait_for_function(LAST_DONE, timeout=15000)
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0
    send(page, "second chat")
    page.wait_for_function(LAST_DONE, timeout=15000)
    send(page, "second again")
    page.wait_for_function(LAST_DONE, timeout=15000)
    # The second turn was sent with the first as history (the demo counts turns).
    assert "(turn 2)" in the_answer(page)
    titles = page.locator("#conversations .open")
    assert titles.all_text_contents() == ["second chat", "first chat"]

    page.reload()
    assert page.locator(".msg.user").all_text_contents() == ["second chat", "second again"]
    page.locator("#conversations .open", has_text="first chat").click()
    assert page.locator(".msg.user").all_text_contents() == ["first chat"]
    assert the_answer(page) == answer_for([{"role": "user", "content": "first chat"}])
    page.reload()  # the conversation shown is kept too
    assert page.locator(".msg.user").all_text_contents() == ["first chat"]

    page.locator("#conversations li", has_text="first chat").locator(".delete").click()
    assert page.locator("#conversations .open").all_text_contents() == ["second chat"]
    assert page.locator(".msg.user").all_text_contents() == ["second chat", "second again"]
    page.reload()
    assert page.locator("#conversations .open").all_text_contents() == ["second chat"]
    assert [c["title"] for c in page.evaluate(STORED)] == ["second chat"]


def test_model_picker_lists_v1_models_and_sends_the_choice(server, page) -> None:
    posts = chat_posts(page)
    page.goto(server.url)
    page.wait_for_function("() => document.querySelectorAll('#model option').length > 1")
    served = [m["id"] for m in requests.get(f"{server.url}/v1/models", timeout=10).json()["data"]]
    assert page.locator("#model option").all_text_contents() == ["default", *served]
    page.select_option("#model", "demo")
    send(page, "which model")
    page.wait_for_function(LAST_DONE, timeout=15000)
    body = json.loads(posts[0]["body"])
    assert body["model"] == "demo" and body["on_disconnect"] == "finish"
    page.reload()  # the choice is remembered
    page.wait_for_function("() => document.querySelector('#model').value === 'demo'")


WIDE = ("wide\n\n| " + " | ".join(f"column{i}" for i in range(12)) + " |\n|" + "---|" * 12 + "\n| "
        + " | ".join("x" * 10 for _ in range(12)) + " |\n\n```\n" + "y" * 300 + "\n```\n\n"
        + "https://example.com/" + "z" * 200)


def test_320px_wide_has_no_horizontal_scroll_and_stop_stays_in_reach(slow, browser) -> None:
    page = browser.new_page(viewport={"width": 320, "height": 560})
    try:
        page.goto(slow.url)
        send(page, WIDE + " " + LONG)
        page.wait_for_function(CHUNKS_AT_LEAST, arg=60, timeout=15000)
        # Following the growing answer: at the bottom, Stop on screen.
        assert page.evaluate("(() => { const s = document.scrollingElement; "
                             "return s.scrollHeight - s.scrollTop - s.clientHeight < 64; })()")
        box = page.locator("#stop").bounding_box()
        assert box and 0 <= box["y"] and box["y"] + box["height"] <= 560 and box["x"] + box["width"] <= 320
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        # A reader who scrolls up stays where they are while the answer grows.
        page.evaluate("window.scrollTo(0, 0)")
        chunks = int(page.locator(".msg.assistant").last.get_attribute("data-chunks"))
        page.wait_for_function(CHUNKS_AT_LEAST, arg=chunks + 10, timeout=15000)
        assert page.evaluate("document.scrollingElement.scrollTop") == 0
        assert page.locator("#stop").bounding_box()["y"] + box["height"] <= 560  # still in reach
        page.click("#stop")
        page.wait_for_function(LAST_DONE, timeout=10000)
        assert page.locator("#status").text_content() == "done (cancelled)"
        page.click("#menu")  # the conversation list slides over, still no sideways scroll
        assert page.locator("#new-chat").is_visible()
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    finally:
        page.close()


@pytest.mark.parametrize(("scheme", "background"),
                         [("light", "rgb(246, 247, 249)"), ("dark", "rgb(20, 23, 28)")])
def test_light_and_dark_follow_the_system(server, browser, scheme, background) -> None:
    page = browser.new_page(color_scheme=scheme)
    try:
        page.goto(server.url)
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == background
    finally:
        page.close()


def test_vendored_renderer_and_sanitizer_are_the_pinned_files(server) -> None:
    readme = (ROOT / "static/vendor/README.md").read_text()
    sums = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M))
    assert set(sums) == {"marked.umd.js", "purify.min.js"}
    for name, digest in sums.items():
        served = requests.get(f"{server.url}/static/vendor/{name}", timeout=10)
        assert served.ok and hashlib.sha256(served.content).hexdigest() == digest, name
    assert "marked v18.2.1" in (ROOT / "static/vendor/marked.umd.js").read_text()[:200]
    assert "DOMPurify 3.4.18" in (ROOT / "static/vendor/purify.min.js").read_text()[:200]
    for licence in ("marked.LICENSE", "purify.LICENSE"):
        assert (ROOT / "static/vendor" / licence).stat().st_size > 500


@pytest.fixture(scope="module")
def keyed(start_server):
    return start_server(API_KEYS=f"web:{KEY}", SECRET_KEY="chat-secret", DEMO_DELAY_MS=5)


PROTOCOL = re.compile(r"Authorization|Bearer|X-API-Key|expired|HTTP 40", re.I)


def test_with_keys_a_user_meets_words_signs_in_and_out(keyed, context) -> None:
    page = context.new_page()
    posts = chat_posts(page)
    page.goto(keyed.url)
    assert page.locator("#auth").is_visible() and not page.locator("#sign-out").is_visible()
    assert page.locator("#auth-status").text_content() == "This server needs an API key to chat."
    send(page, "hello before signing in")
    assert page.locator("#status").text_content() == "Sign in first." and posts == []
    page.click("#es-start")  # EventSource cannot send a key: said in words, not left empty
    assert page.locator("#es-out").text_content().startswith("Sign in first")
    assert not PROTOCOL.search(page.locator("body").inner_text())

    page.fill("#api-key", KEY)
    page.click("#auth-send")
    page.wait_for_function("() => document.querySelector('#auth-status').textContent === 'Signed in as web.'")
    assert page.locator("#sign-out").is_visible()
    page.wait_for_function("() => [...document.querySelectorAll('#model option')]"
                           ".some((o) => o.value === 'demo')")
    page.click("#send")  # the message waited in the box
    page.wait_for_function(LAST_DONE, timeout=15000)
    assert "hello before signing in" in the_answer(page)

    page.click("#sign-out")
    page.wait_for_function(STATUS_SAYS, arg="Signed out")
    assert page.locator("#auth").is_visible() and not page.locator("#sign-out").is_visible()
    assert "streamapp_session" not in str(context.cookies())
    assert page.locator("#model option").all_text_contents() == ["default"]
    assert requests.get(f"{keyed.url}/v1/models", timeout=10).status_code == 401
    send(page, "after signing out")
    assert page.locator("#status").text_content() == "Sign in first." and len(posts) == 1
    page.reload()
    assert page.locator("#auth").is_visible()
    assert not PROTOCOL.search(page.locator("body").inner_text())


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_with_keys_an_ended_session_is_said_in_words(keyed, context, transport) -> None:
    page = context.new_page()
    page.goto(keyed.url)
    page.fill("#api-key", KEY)
    page.click("#auth-send")
    page.wait_for_function("() => document.querySelector('#auth-status').textContent === 'Signed in as web.'")
    context.clear_cookies()  # the session ends (it expired, or the secret was rotated)
    asked: list[tuple[str, str]] = []
    page.on("request", lambda r: asked.append((r.method, urlsplit(r.url).path)))
    page.click("#es-start")
    page.wait_for_function("(t) => document.querySelector('#es-out').textContent.includes(t)",
                           arg="session has ended")
    # Why it was refused is asked of a request that starts no stream.
    assert ("GET", "/v1/models") in asked and ("HEAD", "/stream") not in asked, asked
    page.fill("#api-key", KEY)
    page.click("#auth-send")
    page.wait_for_function("() => document.querySelector('#auth-status').textContent === 'Signed in as web.'")
    context.clear_cookies()
    page.select_option("#transport", transport)
    send(page, "my session ended")
    page.wait_for_function(LAST_DONE, timeout=15000)
    words = "Your session has ended: sign in again to go on."
    assert page.locator(".msg.assistant .note").last.text_content() == words
    assert page.locator("#auth-status").text_content() == words and page.locator("#auth").is_visible()
    assert not PROTOCOL.search(page.locator("body").inner_text())


def test_delete_session_signs_out(keyed) -> None:
    with requests.Session() as http:
        signed = http.post(f"{keyed.url}/api/session", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
        assert signed.json()["client"] == "web" and "streamapp_session" in http.cookies
        own = {"Origin": keyed.url}
        assert http.get(f"{keyed.url}/v1/models", headers=own, timeout=10).ok
        gone = http.delete(f"{keyed.url}/api/session", headers=own, timeout=10)
        assert gone.status_code == 200 and gone.json() == {"client": None, "expires_in": None}
        assert "streamapp_session" not in http.cookies
        assert http.get(f"{keyed.url}/v1/models", headers=own, timeout=10).status_code == 401
        assert http.delete(f"{keyed.url}/api/session", headers=own, timeout=10).status_code == 401


def test_with_keys_an_answer_left_by_an_ended_session_resumes_after_signing_in(start_server, context) -> None:
    slow_keyed = start_server(API_KEYS=f"web:{KEY}", SECRET_KEY="chat-secret", DEMO_DELAY_MS=25)
    page = context.new_page()
    page.goto(slow_keyed.url)
    page.fill("#api-key", KEY)
    page.click("#auth-send")
    page.wait_for_function(STATUS_SAYS, arg="Signed in as web.")
    send(page, LONG)
    page.wait_for_function(CHUNKS_AT_LEAST, arg=25, timeout=15000)
    context.clear_cookies()  # the session ends mid-answer
    page.reload()
    assert page.locator(".msg.assistant .note").text_content() == "Sign in to see the rest of this answer."
    assert page.locator("#auth").is_visible()
    page.fill("#api-key", KEY)
    page.click("#auth-send")
    page.wait_for_function(LAST_DONE, timeout=30000)
    assert the_answer(page) == answer_for([{"role": "user", "content": LONG}])
    assert not page.locator(".msg.assistant .note").is_visible()
