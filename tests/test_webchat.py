"""The chat page at `/`, driven in headless Chromium against a live server on the demo model.

The browser is the distribution's chromium with its chromedriver, through selenium (.ci/run installs them
with apt; without them these tests skip and say why). Replies the page shows are compared with what the
real `openai` client gets from the same server for the same request (greedy, so the reply is determined),
under another session id, so the reference is a fresh prefill while the page's turns reuse its session.
Replies with reasoning and tool calls come from the TEST-ONLY `Script` hook (the demo model cannot write
them): prompt rendering, prefill, parsing and streaming still run for real.

Screenshots go to test-artifacts/webchat/ (git-ignored); the path is printed at the end of the module.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pq_testutil import scripted_server

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
requests = pytest.importorskip("requests")

API_KEY = "webchat-key-456"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "webchat"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}]


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install '.[test]')"
    for exe in ("chromium", "chromedriver"):
        if shutil.which(exe) is None:
            return f"{exe} is not installed (apt-get install chromium chromium-driver; .ci/run does it)"
    return None


@pytest.fixture(scope="module")
def server():
    with scripted_server(api_key=API_KEY, n_ctx=4096) as s:
        yield dict(s, client=openai.OpenAI(base_url=s["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=120))


@pytest.fixture(scope="module")
def browser(pytestconfig):
    missing = _browser_missing()
    if missing:
        warnings.warn(f"browser tests of the chat page skipped: {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    profile = tempfile.mkdtemp(prefix="pyqwen-chromium-")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-proxy-server",
              "--no-first-run", "--disable-extensions", "--disable-background-networking",
              "--window-size=1100,900", f"--user-data-dir={profile}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    driver.set_script_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    b = {"driver": driver, "requests": [], "shots": []}
    yield b
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
    if b["shots"]:
        # Past the output capture, so that the path shows in a normal run.
        capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print(f"\nchat page screenshots: {ARTIFACTS} ({', '.join(b['shots'])})")


# ---- helpers --------------------------------------------------------------------------------------------

def collect_requests(b) -> None:
    """Adds every request the browser sent (the DevTools Network log) to b['requests'], as (URL, the URL
    of the document that asked)."""
    for entry in b["driver"].get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            p = msg["params"]
            b["requests"].append((p["request"]["url"], p.get("documentURL", "")))


def screenshot(b, name: str) -> None:
    b["driver"].save_screenshot(str(ARTIFACTS / name))
    b["shots"].append(name)


def open_page(b, server, *, temperature="0", max_tokens="40", seed="", thinking=False, tools=""):
    """Loads the page (a new conversation: a new session id), enters the key and the settings."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = b["driver"]
    d.get(server["url"] + "/")
    d.execute_script("sessionStorage.clear()")
    d.get(server["url"] + "/")
    wait(d, lambda: "API key" in d.find_element(By.ID, "status").text)
    assert d.find_element(By.ID, "settings").is_displayed()      # opened for the key
    key = d.find_element(By.ID, "api-key")
    key.send_keys(API_KEY, Keys.TAB)
    wait(d, lambda: d.find_element(By.ID, "model").text == server["engine"].model_name)
    for field, value in (("temperature", temperature), ("max-tokens", max_tokens), ("seed", seed)):
        e = d.find_element(By.ID, field)
        e.clear()
        e.send_keys(value)
    box = d.find_element(By.ID, "thinking")
    if box.is_selected() != thinking:
        box.click()
    t = d.find_element(By.ID, "tools")
    t.clear()
    if tools:
        d.execute_script("arguments[0].value = arguments[1]", t, tools)
    d.find_element(By.ID, "settings-toggle").click()              # fold the settings away
    return d


def wait(d, cond, timeout=30.0):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(d, timeout, poll_frequency=0.05).until(lambda _: cond())


def type_and_send(d, text: str) -> None:
    from selenium.webdriver.common.by import By

    d.find_element(By.ID, "input").send_keys(text)
    d.find_element(By.ID, "send").click()


def wait_idle(d, n_messages: int, timeout=60.0) -> list[dict]:
    """Waits until the page holds n messages and no reply is streaming; returns the page's messages."""
    wait(d, lambda: d.execute_script(
        "const s = pyqwenChat.state; return s.controller === null && s.messages.length === arguments[0]",
        n_messages), timeout)
    return d.execute_script("return pyqwenChat.state.messages")


def stats_of(d, i: int) -> tuple[int, int, str]:
    """(prompt tokens, cached tokens, the whole line) from the i-th assistant message's stats line."""
    from selenium.webdriver.common.by import By

    line = d.find_elements(By.CSS_SELECTOR, ".msg.assistant .stats")[i].text
    m = re.search(r"prompt (\d+) tokens \((\d+) cached\)", line)
    assert m, line
    return int(m.group(1)), int(m.group(2)), line


def reference(server, messages, **kw):
    """The same request through the openai client, on a fresh session."""
    kw.setdefault("max_tokens", 40)
    r = server["client"].chat.completions.create(
        model="demo", messages=messages, temperature=0,
        extra_body={"chat_template_kwargs": {"enable_thinking": False, "preserve_thinking": True}},
        extra_headers={"X-Session-Id": f"ref-{time.monotonic_ns()}"}, **kw)
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    return r


def render(d, text: str) -> str:
    """The page's Markdown renderer on `text`, as HTML (serialized by the browser)."""
    return d.execute_script(
        "const div = document.createElement('div'); div.appendChild(pyqwenMarkdown.render(arguments[0]));"
        "return div.innerHTML;", text)


# ---- tests ------------------------------------------------------------------------------------------------

def test_page_is_open_and_holds_no_secret(server):
    r = requests.get(server["url"] + "/", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert API_KEY not in r.text and "static/chat.js" in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    for name, ctype in (("chat.js", "javascript"), ("markdown.js", "javascript"), ("chat.css", "text/css")):
        s = requests.get(f"{server['url']}/static/{name}", timeout=10)
        assert s.status_code == 200 and ctype in s.headers["content-type"] and API_KEY not in s.text
    assert requests.get(server["url"] + "/static/nope.js", timeout=10).status_code == 404
    assert requests.get(server["url"] + "/static/../app.py", timeout=10).status_code == 404
    # The page is open, the API behind it is not.
    assert requests.get(server["url"] + "/v1/models", timeout=10).status_code == 401


def test_markdown_renderer(server, browser):
    d = browser["driver"]
    d.get(server["url"] + "/")
    cases = {
        "Hello **bold**, *it* and `x<y`":
            "<p>Hello <strong>bold</strong>, <em>it</em> and <code>x&lt;y</code></p>",
        "```python\ndef f(a, b):\n    return a < b and '<b>'\n```\nafter":
            '<pre data-lang="python"><code class="language-python">def f(a, b):\n    return a &lt; b and \'&lt;b&gt;\''
            "</code></pre><p>after</p>",
        "```\nstill streaming **not bold**":       # an open fence renders as code to the end
            "<pre><code>still streaming **not bold**</code></pre>",
        "- one\n- two `2`\n\n3. three\n4. four":
            "<ul><li>one</li><li>two <code>2</code></li></ul><ol start=\"3\"><li>three</li><li>four</li></ol>",
        "## Title\nline one\nline two":
            "<h2>Title</h2><p>line one<br>line two</p>",
        "see [the docs](https://example.com/a?b=1&c=2) now":
            '<p>see <a href="https://example.com/a?b=1&amp;c=2" target="_blank" rel="noopener noreferrer">'
            "the docs</a> now</p>",
        "snake_case_name and a * b * c": "<p>snake_case_name and a * b * c</p>",
        # Untrusted text stays text: markup, handlers and script URLs.
        '<img src=x onerror="window.__xss=1">':
            '<p>&lt;img src=x onerror="window.__xss=1"&gt;</p>',
        "[click](javascript:window.__xss=1) [data](data:text/html,<b>x</b>)":
            "<p>[click](javascript:window.__xss=1) [data](data:text/html,&lt;b&gt;x&lt;/b&gt;)</p>",
        "**<script>window.__xss=1</script>**":
            "<p><strong>&lt;script&gt;window.__xss=1&lt;/script&gt;</strong></p>",
        "[<img src=x onerror=window.__xss=1>](https://example.com/)":
            '<p><a href="https://example.com/" target="_blank" rel="noopener noreferrer">'
            "&lt;img src=x onerror=window.__xss=1&gt;</a></p>",
    }
    for src, html in cases.items():
        assert render(d, src) == html, src
    # Put into the live page: nothing becomes an element, nothing runs.
    n_img = d.execute_script(
        "for (const s of arguments[0]) document.getElementById('messages').appendChild(pyqwenMarkdown.render(s));"
        "return document.querySelectorAll('#messages img, #messages script').length;", list(cases))
    time.sleep(0.2)
    assert n_img == 0 and d.execute_script("return window.__xss") is None
    collect_requests(browser)


def test_reply_matches_the_openai_client_and_turn_two_is_cached(server, browser):
    d = open_page(browser, server, temperature="0", max_tokens="40")
    type_and_send(d, "def fibonacci(n):")
    msgs = wait_idle(d, 2)
    ref = reference(server, [{"role": "user", "content": "def fibonacci(n):"}])
    assert msgs[1]["content"] == ref.choices[0].message.content and msgs[1]["content"]
    assert msgs[1]["reasoning_content"] == "" and msgs[1]["error"] == ""
    prompt1, cached1, line = stats_of(d, 0)
    assert prompt1 == ref.usage.prompt_tokens and cached1 == 0
    assert line.startswith(server["engine"].model_name + " · ") and re.search(r"decode [\d.]+ tok/s", line), line
    assert f"{ref.usage.completion_tokens} generated" in line
    # The speeds come from the server's timings in the stream's usage chunk.
    assert msgs[1]["stats"]["timings"]["prefilled_tokens"] == prompt1 - cached1
    assert msgs[1]["stats"]["timings"]["decode_seconds"] > 0

    # Turn two on the same session: the whole first exchange comes from the cache.
    type_and_send(d, "class Stack:")
    msgs = wait_idle(d, 4)
    history = [{"role": "user", "content": "def fibonacci(n):"},
               {"role": "assistant", "content": msgs[1]["content"]},
               {"role": "user", "content": "class Stack:"}]
    ref2 = reference(server, history)
    assert msgs[3]["content"] == ref2.choices[0].message.content
    prompt2, cached2, _ = stats_of(d, 1)
    assert prompt2 == ref2.usage.prompt_tokens
    assert prompt1 + ref.usage.completion_tokens <= cached2 < prompt2
    screenshot(browser, "conversation.png")
    collect_requests(browser)


def test_reasoning_tool_calls_and_markdown_stream_into_the_page(server, browser):
    from selenium.webdriver.common.by import By

    d = open_page(browser, server, thinking=True, max_tokens="200", tools=json.dumps(TOOLS))
    server["script"].push(
        "The user wants <b>weather</b>.\nI will call the tool.\n</think>\n\n"
        "Checking **Paris**; meanwhile, a helper:\n\n```python\ndef c_to_f(c):\n    return c * 9 / 5 + 32\n```\n\n"
        '<img src=x onerror="window.__xss=1">\n\n'
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>")
    type_and_send(d, "Weather in Paris?")
    msgs = wait_idle(d, 2)
    reply = msgs[1]
    assert reply["reasoning_content"] == "The user wants <b>weather</b>.\nI will call the tool."
    assert reply["finish_reason"] == "tool_calls"
    (call,) = reply["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 3}

    msg = d.find_elements(By.CSS_SELECTOR, ".msg.assistant")[0]
    details = msg.find_element(By.CSS_SELECTOR, "details.reasoning")
    assert details.get_attribute("open") is None                      # folded
    assert details.find_element(By.TAG_NAME, "summary").text == "Reasoning"
    code = msg.find_element(By.CSS_SELECTOR, ".content pre code.language-python")
    assert code.get_attribute("textContent") == "def c_to_f(c):\n    return c * 9 / 5 + 32"
    assert msg.find_element(By.CSS_SELECTOR, ".content strong").text == "Paris"
    assert '<img src=x onerror="window.__xss=1">' in msg.find_element(By.CSS_SELECTOR, ".content").text
    assert msg.find_elements(By.TAG_NAME, "img") == [] and d.execute_script("return window.__xss") is None
    tool = msg.find_element(By.CSS_SELECTOR, ".tool-call")
    assert tool.find_element(By.CSS_SELECTOR, ".tool-name").text == "tool call: get_weather"
    assert json.loads(tool.find_element(By.TAG_NAME, "code").text) == {"city": "Paris", "days": 3}
    screenshot(browser, "reasoning_folded_tool_call.png")
    details.find_element(By.TAG_NAME, "summary").click()
    assert "<b>weather</b>" in details.find_element(By.CSS_SELECTOR, ".reasoning-text").text
    screenshot(browser, "reasoning_open.png")
    collect_requests(browser)


def test_stop_regenerate_and_edit(server, browser):
    from selenium.webdriver.common.by import By

    d = open_page(browser, server, max_tokens="3000")
    engine = server["engine"]
    cancelled0 = engine.metrics.cancelled
    long_reply = "".join(f"line {i} of a long reply\n" for i in range(400))        # ~3,000 tokens
    server["script"].push(long_reply)
    type_and_send(d, "Tell me a lot.")
    wait(d, lambda: len(d.execute_script("return pyqwenChat.state.messages[1].content")) > 0)
    d.find_element(By.ID, "stop").click()
    msgs = wait_idle(d, 2)
    partial = msgs[1]["content"]
    assert msgs[1]["note"] == "stopped" and msgs[1]["error"] == ""
    assert 0 < len(partial) < len(long_reply) and long_reply.startswith(partial)
    assert d.find_element(By.CSS_SELECTOR, ".msg.assistant .stats").text == "stopped"
    assert d.find_element(By.ID, "send").is_displayed() and not d.find_element(By.ID, "stop").is_displayed()
    wait(d, lambda: engine.metrics.cancelled == cancelled0 + 1)                 # the server stopped too

    # Regenerate: the same conversation without the stopped reply; the prompt is already cached.
    d.find_element(By.ID, "settings-toggle").click()
    mt = d.find_element(By.ID, "max-tokens")
    mt.clear()
    mt.send_keys("40")
    d.find_element(By.CSS_SELECTOR, ".msg.assistant button.regenerate").click()
    msgs = wait_idle(d, 2)
    ref = reference(server, [{"role": "user", "content": "Tell me a lot."}])
    assert msgs[1]["content"] == ref.choices[0].message.content and msgs[1]["note"] == ""
    prompt, cached, _ = stats_of(d, 0)
    assert prompt == ref.usage.prompt_tokens and 0 < cached <= prompt

    # A second turn, then edit its message and resend: the history is cut there, and the first exchange,
    # which the edit left alone, comes from the cache.
    first = [{"role": "user", "content": "Tell me a lot."}, {"role": "assistant", "content": msgs[1]["content"]}]
    type_and_send(d, "And more?")
    msgs = wait_idle(d, 4)
    d.find_elements(By.CSS_SELECTOR, ".msg.user button.edit")[1].click()
    box = d.find_element(By.CSS_SELECTOR, ".msg.user textarea.edit-box")
    box.clear()
    box.send_keys("And less?")
    d.find_element(By.CSS_SELECTOR, ".msg.user button.edit-send").click()
    msgs = wait_idle(d, 4)
    assert [m["content"] for m in msgs[:3]] == ["Tell me a lot.", first[1]["content"], "And less?"]
    ref2 = reference(server, first + [{"role": "user", "content": "And less?"}])
    assert msgs[3]["content"] == ref2.choices[0].message.content
    prompt2, cached2, _ = stats_of(d, 1)
    # Independently: the tokens both prompts share (the template rendered by jinja2 from the GGUF's text).
    m = server["model"]
    kw = {"add_generation_prompt": True, "enable_thinking": False, "preserve_thinking": True}
    before = m.tokenize(m.chat_template.render(first + [{"role": "user", "content": "And more?"}], **kw))
    after = m.tokenize(m.chat_template.render(first + [{"role": "user", "content": "And less?"}], **kw))
    common = next(i for i, (x, y) in enumerate(zip(before, after)) if x != y)
    exchange = m.tokenize(m.chat_template.render(first, add_generation_prompt=False, preserve_thinking=True))
    assert prompt2 == ref2.usage.prompt_tokens == len(after)
    assert len(exchange) <= cached2 <= common
    assert [e.text for e in d.find_elements(By.CSS_SELECTOR, ".msg.user .body")] == ["Tell me a lot.", "And less?"]
    d.find_element(By.ID, "settings-toggle").click()
    print(f"regenerate: {cached} of {prompt} prompt tokens cached; edit-and-resend: {cached2} of {prompt2} "
          f"(first exchange {len(exchange)}, common prefix {common})")
    screenshot(browser, "regenerated_and_edited.png")
    collect_requests(browser)


def test_api_key_stays_in_the_tab_and_errors_are_shown(server, browser):
    from selenium.webdriver.common.by import By

    d = open_page(browser, server, max_tokens="0")
    d.refresh()                                   # sessionStorage outlives a reload of the tab
    wait(d, lambda: d.find_element(By.ID, "model").text == server["engine"].model_name)
    assert d.find_element(By.ID, "api-key").get_attribute("value") == API_KEY
    assert d.execute_script("return [localStorage.length, document.cookie]") == [0, ""]
    assert d.find_element(By.ID, "status").text == ""
    # The server's 4xx, in its own words, under the reply it refused.
    d.find_element(By.ID, "settings-toggle").click()
    mt = d.find_element(By.ID, "max-tokens")
    mt.clear()
    mt.send_keys("0")
    type_and_send(d, "hi")
    msgs = wait_idle(d, 2)
    assert msgs[1]["error"].startswith("400: ") and "max_tokens" in msgs[1]["error"]
    assert d.find_element(By.CSS_SELECTOR, ".msg.assistant .error").text == msgs[1]["error"]
    # A tools field that is not JSON is reported before anything is sent.
    d.execute_script("document.getElementById('tools').value = '[{oops'")
    d.find_element(By.CSS_SELECTOR, ".msg.assistant button.regenerate").click()
    wait(d, lambda: d.find_element(By.ID, "status").text.startswith("Tools is not valid JSON"))
    assert len(d.execute_script("return pyqwenChat.state.messages")) == 1
    collect_requests(browser)


def test_the_page_loads_nothing_from_elsewhere(server, browser):
    origin = server["url"]

    def ours(url: str) -> bool:
        u, o = urlsplit(url), urlsplit(origin)
        return (u.scheme, u.netloc) == (o.scheme, o.netloc)

    page = [url for url, doc in browser["requests"] if ours(doc)]
    assert {"/", "/static/chat.js", "/static/markdown.js", "/static/chat.css", "/static/favicon.svg",
            "/v1/models", "/v1/chat/completions"} <= {urlsplit(u).path for u in page}
    # Everything the page asked for came from the server; and nothing at all left for the network
    # (the browser's own chrome:// pages load from inside the browser).
    assert [u for u in page if not ours(u)] == []
    assert [u for u, _ in browser["requests"] if urlsplit(u).scheme in ("http", "https", "ws", "wss")
            and not ours(u)] == []
    # And the console saw no error (a script error, a CSP violation or a failed load of another origin would
    # be one) besides the server's answers the tests asked for (the 401 before the key, the 400).
    errors = [e for e in browser["driver"].get_log("browser") if e["level"] == "SEVERE"
              and not (e["source"] == "network" and e["message"].startswith(origin + "/v1/"))]
    assert errors == []
