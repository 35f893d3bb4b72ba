"""The demo page in real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import pytest

from streamapp.providers.demo import answer_for

# Records each new text of the last answer (the page's CSP forbids eval, so waits are functions);
# true once the answer is marked done.
SAMPLE_UNTIL_DONE = """() => {
    const el = [...document.querySelectorAll('.msg.assistant')].pop();
    if (!el) return false;
    window.__samples = window.__samples || [];
    const t = el.querySelector('.answer')?.textContent || '';
    if (window.__samples[window.__samples.length - 1] !== t) window.__samples.push(t);
    return el.dataset.done === 'true';
}"""
LAST_DONE = "() => [...document.querySelectorAll('.msg.assistant')].pop()?.dataset.done === 'true'"


@pytest.fixture
def page(browser):
    page = browser.new_page()
    yield page
    page.close()


def test_chat_answer_grows_then_completes(server, page) -> None:
    page.goto(server.url)
    page.fill("#message", "hello from chromium")
    page.click("#send")
    answer = page.locator(".msg.assistant").last
    # Sample the growing answer until it is marked done (bounded by the wait's timeout).
    page.wait_for_function(SAMPLE_UNTIL_DONE, polling=10, timeout=20000)
    seen = page.evaluate("window.__samples")
    final = answer.locator(".answer").text_content()
    assert "hello from chromium" in final and "流式输出" in final
    growing = [s for s in seen if s and s != final]
    assert len(growing) >= 3, seen
    assert all(final.startswith(s) for s in growing)
    assert page.locator("#status").text_content().startswith("done (stop)")


def test_stop_button_cancels_generation(start_server, page) -> None:
    slow = start_server(DEMO_DELAY_MS=300, RESUME_GRACE_S=0)
    page.goto(slow.url)
    page.fill("#message", "stop me")
    page.click("#send")
    page.wait_for_function("() => document.querySelector('.msg.assistant').textContent.length > 0",
                           timeout=10000)
    page.click("#stop")
    page.wait_for_function("() => document.querySelector('.msg.assistant').dataset.done === 'true'",
                           timeout=5000)
    assert page.locator("#status").text_content() == "done (cancelled)"
    assert page.locator(".msg.assistant .note").text_content() == "(stopped)"


def test_eventsource_demo(server, page) -> None:
    page.goto(server.url)
    page.click("#es-start")
    page.wait_for_function("() => document.querySelector('#es-out').textContent"
                           ".includes('one token at a time')",
                           timeout=10000)
    assert "你好" in page.locator("#es-out").text_content()


def test_reasoning_is_shown_apart_from_the_answer(start_server, page) -> None:
    from tests.fake_upstream import REASONING, token_list

    thinking = start_server(OPENAI_MODEL="reasoning?tokens=4", HEADER_WAIT_S=0.2)
    page.goto(thinking.url)
    page.wait_for_function("() => document.querySelectorAll('#model option').length > 1")  # from /v1/models
    page.select_option("#model", "openai/reasoning?tokens=4")
    page.fill("#message", "think first")
    page.click("#send")
    page.wait_for_function("() => document.querySelector('.msg.assistant').dataset.done === 'true'",
                           timeout=10000)
    answer = page.locator(".msg.assistant")
    assert answer.locator(".reasoning .reasoning-text").text_content() == "".join(REASONING)
    assert answer.locator(".answer").text_content() == "".join(token_list(4))
    assert page.locator("#status").text_content() == "done (stop)"


# The demo provider echoes the message, so a long message makes a long answer (~190 tokens).
LONG = " ".join(f"word{i}" for i in range(150))


def test_websocket_chat_streams_token_by_token(server, page) -> None:
    sockets: list[str] = []
    posts: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.on("request", lambda r: posts.append(r.url) if "/api/chat" in r.url else None)
    page.goto(server.url)
    page.select_option("#transport", "ws")
    page.fill("#message", "hello over a socket")
    page.click("#send")
    page.wait_for_function(SAMPLE_UNTIL_DONE, polling=10, timeout=20000)
    seen = page.evaluate("window.__samples")
    answer = page.locator(".msg.assistant").last
    final = answer.locator(".answer").text_content()
    assert final == answer_for([{"role": "user", "content": "hello over a socket"}])
    growing = [s for s in seen if s and s != final]
    assert len(growing) >= 3, seen  # partial answers were on screen before the end
    assert all(final.startswith(s) for s in growing)
    assert int(answer.get_attribute("data-chunks")) > 3
    assert page.locator("#status").text_content() == "done (stop)"
    assert sockets == [server.url.replace("http://", "ws://") + "/ws"] and posts == []


def test_websocket_stop_then_chat_again_on_the_same_socket(start_server, page) -> None:
    slow = start_server(DEMO_DELAY_MS=100, RESUME_GRACE_S=0)  # the long answer takes ~19 s
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws))
    page.goto(slow.url)
    page.select_option("#transport", "ws")
    page.fill("#message", LONG)
    page.click("#send")
    first = page.locator(".msg.assistant").first
    page.wait_for_function("() => Number(document.querySelector('.msg.assistant').dataset.chunks) >= 3",
                           timeout=10000)
    assert page.locator("#stop").is_enabled()
    page.click("#stop")
    page.wait_for_function(LAST_DONE, timeout=10000)  # bounds the wait only: the answer runs ~18 s
    assert page.locator("#status").text_content() == "done (cancelled)"
    assert first.locator(".note").text_content() == "(stopped)"
    stopped = first.locator(".answer").text_content()
    assert stopped.startswith("You said:") and "word149" not in stopped
    assert page.locator("#stop").is_disabled() and page.locator("#send").is_enabled()

    page.fill("#message", "again")
    page.click("#send")
    page.wait_for_function(LAST_DONE, timeout=15000)
    second = page.locator(".msg.assistant").nth(1)
    # Exactly the second answer (with the first turn as history): nothing of the stopped one leaked in.
    assert second.locator(".answer").text_content() == answer_for(
        [{"role": "user", "content": LONG}, {"role": "assistant", "content": stopped},
         {"role": "user", "content": "again"}])
    assert first.locator(".answer").text_content() == stopped
    assert page.locator("#status").text_content() == "done (stop)"
    assert len(sockets) == 1 and not sockets[0].is_closed()  # both chats on one socket


KEY = "sk-browser-3f1c77aa"


def test_websocket_refusals_are_shown_and_the_page_recovers(start_server, page) -> None:
    keyed = start_server(API_KEYS=f"web:{KEY}", SECRET_KEY="browser-secret", MAX_MESSAGE_CHARS=100,
                         DEMO_DELAY_MS=5)
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws))
    page.goto(keyed.url)
    page.select_option("#transport", "ws")
    page.fill("#message", "before signing in")
    page.click("#send")
    # Not signed in: the page asks for the key in words and keeps the message; nothing is sent.
    assert page.locator("#auth").is_visible()
    assert page.locator("#status").text_content() == "Sign in first."
    assert page.locator("#message").input_value() == "before signing in"
    assert page.locator(".msg").count() == 0 and sockets == []

    page.fill("#api-key", KEY)
    page.click("#auth-send")
    page.wait_for_function("() => document.querySelector('#auth-status').textContent === 'Signed in as web.'")
    page.fill("#message", "x" * 101)  # over MAX_MESSAGE_CHARS: refused in-band, the socket stays
    page.click("#send")
    page.wait_for_function(LAST_DONE, timeout=10000)
    too_long = page.locator(".msg.assistant").last
    assert "error" in too_long.get_attribute("class")
    assert "MAX_MESSAGE_CHARS" in too_long.locator(".note").text_content()
    assert page.locator("#status").text_content() == "failed"

    page.fill("#message", "with a cookie")
    page.click("#send")
    page.wait_for_function(LAST_DONE, timeout=10000)
    assert "with a cookie" in page.locator(".msg.assistant").last.locator(".answer").text_content()
    assert page.locator("#status").text_content() == "done (stop)"
    assert len(sockets) == 1  # the refusal kept the socket
