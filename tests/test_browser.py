"""The demo page in real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import pytest


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
    seen: list[str] = []
    # Sample the growing answer until it is marked done (bounded by the wait's timeout).
    page.wait_for_function(
        """() => {
            const el = [...document.querySelectorAll('.msg.assistant')].pop();
            if (!el) return false;
            window.__samples = window.__samples || [];
            const t = el.textContent;
            if (window.__samples[window.__samples.length - 1] !== t) window.__samples.push(t);
            return el.dataset.done === 'true';
        }""", polling=10, timeout=20000)  # raises if the answer is not done in time
    seen = page.evaluate("window.__samples")
    final = answer.text_content()
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
    page.select_option("#provider", "openai")
    page.fill("#message", "think first")
    page.click("#send")
    page.wait_for_function("() => document.querySelector('.msg.assistant').dataset.done === 'true'",
                           timeout=10000)
    answer = page.locator(".msg.assistant")
    assert answer.locator(".reasoning").text_content() == "".join(REASONING)
    assert answer.locator(".answer").text_content() == "".join(token_list(4))
    assert page.locator("#status").text_content() == "done (stop)"
