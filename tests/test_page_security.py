"""The demo page's security in headless Chromium: CSP, output as text, 320 px, key form, CORS and
cross-site requests with the user's session cookie."""

from __future__ import annotations

import re

import pytest
import requests

KEY = "sk-page-6b2e91d0"


@pytest.fixture(scope="module")
def sites(start_server):
    """A server needing a key, a second origin (another port) that CORS allows, and a third one
    it does not allow: same site (127.0.0.1), so SameSite=Strict still sends the cookie there."""
    other, evil = start_server(), start_server()
    keyed = start_server(API_KEYS=f"web:{KEY}", SECRET_KEY="page-secret", CORS_ORIGINS=other.url,
                         DEMO_DELAY_MS=5, HEADER_WAIT_S=0.2)
    return keyed, other, evil


@pytest.fixture
def page(browser):
    page = browser.new_page()
    yield page
    page.close()


def wait_done(page) -> None:
    page.wait_for_function("() => [...document.querySelectorAll('.msg.assistant')].pop()?.dataset.done"
                           " === 'true'",
                           timeout=15000)


def test_page_has_strict_csp_and_no_inline_script(server) -> None:
    resp = requests.get(server.url, timeout=10)
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    html = resp.text
    assert re.findall(r"<script\b[^>]*>", html) == [
        '<script src="/static/vendor/marked.umd.js">', '<script src="/static/vendor/purify.min.js">',
        '<script type="module" src="/static/app.js">']
    assert re.search(r"<script[^>]*>\s*[^<\s]", html) is None  # nothing between script tags
    assert not re.search(r"\son[a-z]+\s*=", html) and "javascript:" not in html and "style=" not in html
    favicon = re.search(r'<link rel="icon"[^>]*href="([^"]+)"', html).group(1)
    assert favicon.startswith("/static/") and requests.get(server.url + favicon, timeout=10).ok
    css = requests.get(f"{server.url}/static/app.css", timeout=10).text
    assert "Noto Sans CJK SC" in css and "PingFang SC" in css and "Microsoft YaHei" in css


def test_model_output_renders_as_text(server, page) -> None:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(server.url)
    evil = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"><b>bold</b>'
    page.fill("#message", evil)
    page.click("#send")
    wait_done(page)
    answer = page.locator(".msg.assistant").last
    assert evil in answer.text_content()  # the demo provider echoes the message
    assert answer.locator("script, img, b").count() == 0
    assert page.evaluate("window.__xss") is None
    assert not [e for e in errors if "Content Security Policy" in e]  # the page itself obeys its CSP


def test_send_and_stop_fit_a_320px_screen(server, browser) -> None:
    page = browser.new_page(viewport={"width": 320, "height": 640})
    try:
        page.goto(server.url)
        for sel in ("#send", "#stop", "#message"):
            box = page.locator(sel).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 320, (sel, box)
        assert page.evaluate("document.documentElement.scrollWidth") <= 320
    finally:
        page.close()


def test_key_form_then_chat_and_eventsource_by_cookie(sites, page) -> None:
    keyed, _, _ = sites
    page.goto(keyed.url)
    assert page.locator("#auth").is_visible()
    page.fill("#api-key", "wrong")
    page.click("#auth-send")
    page.wait_for_function("() => document.querySelector('#auth-status').textContent.includes('invalid')")
    page.fill("#api-key", KEY)
    page.click("#auth-send")
    page.wait_for_function("() => document.querySelector('#auth-status').textContent === 'Signed in as web.'")
    assert not page.locator("#auth").is_visible()
    assert KEY not in str(page.context.cookies())
    page.fill("#message", "hello with a cookie")
    page.click("#send")
    wait_done(page)
    assert "hello with a cookie" in page.locator(".msg.assistant").last.text_content()
    page.click("#es-start")  # EventSource sends no headers: the cookie authenticates it
    page.wait_for_function("() => document.querySelector('#es-out').textContent"
                           ".includes('one token at a time')",
                           timeout=10000)
    page.reload()
    assert not page.locator("#auth").is_visible()  # the session outlives the page


PREFLIGHTED = """async (url) => {
    try {
    const r = await fetch(url + '/api/chat', {method: 'POST', body: JSON.stringify({uid: 1, message: 'hi'}),
        headers: {'Content-Type': 'application/json', 'Authorization': 'Bearer KEY', 'Last-Event-ID': ''}});
        return {status: r.status, sid: r.headers.get('X-Stream-Id'), body: (await r.text()).length};
    } catch (e) { return {error: String(e)}; }
}""".replace("KEY", KEY)


def test_cors_preflight_from_a_second_origin(sites, page) -> None:
    keyed, other, _ = sites
    page.goto(other.url + "/healthz")  # allowed origin
    got = page.evaluate(PREFLIGHTED, keyed.url)
    assert got["status"] == 200 and got["sid"] and got["body"] > 0, got
    page.goto(other.url.replace("127.0.0.1", "localhost") + "/healthz")  # same port, another origin
    got = page.evaluate(PREFLIGHTED, keyed.url)
    assert "error" in got and "Failed to fetch" in got["error"], got


def test_cross_site_page_cannot_start_generations_with_the_cookie(sites, page) -> None:
    keyed, _, evil = sites
    page.goto(keyed.url)
    page.fill("#api-key", KEY)
    page.click("#auth-send")
    page.wait_for_function("() => document.querySelector('#auth-status').textContent.startsWith('Signed in')")
    page.goto(evil.url + "/healthz")  # same site, another origin, not in CORS_ORIGINS
    with page.expect_response(lambda r: "/stream" in r.url and r.url.startswith(keyed.url)) as got:
        # A GET stream route, no CORS, credentials sent (the two ports are one site, so SameSite lets
        # the cookie go: only the Origin rule stops it).
        page.evaluate("(u) => fetch(u + '/stream?text=paid%20words', {mode: 'no-cors', "
                      "credentials: 'include'}).catch(() => 0)", keyed.url)
    assert got.value.status == 403
    with page.expect_response(lambda r: "/api/chat" in r.url) as got:
        page.evaluate("""(u) => fetch(u + '/api/chat', {method: 'POST', mode: 'no-cors',
            credentials: 'include', headers: {'Content-Type': 'text/plain'},
            body: '{"uid": 1, "message": "paid"}'}).catch(() => 0)""",
                      keyed.url)
    assert got.value.status == 403
    with page.expect_response(lambda r: "/ai-stream" in r.url) as got:
        page.evaluate("(u) => { const f = document.createElement('form'); f.method = 'GET'; "
                      "f.action = u + '/ai-stream'; document.body.append(f); f.submit(); }", keyed.url)
    assert got.value.status == 403
