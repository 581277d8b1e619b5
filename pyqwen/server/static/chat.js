// The chat page of `pyqwen serve`: plain JS, no framework, nothing loaded from elsewhere.
//
// It speaks the server's own OpenAI-compatible API: POST v1/chat/completions with stream: true, read as
// server-sent events from fetch()'s ReadableStream. One X-Session-Id per conversation routes every turn to
// the same cached state on the server, so a follow-up, a regenerated reply or an edited message prefills
// only what changed (the stats line shows the cached tokens). Stop aborts the fetch; the server cancels
// the generation when the connection closes.
//
// Model text is untrusted: it reaches the DOM only through textContent or pyqwenMarkdown.render (which
// builds nodes, never HTML strings).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = "pyqwen.apiKey";       // sessionStorage: gone when the tab closes

  const state = {
    messages: [],          // {role: "user", content} | {role: "assistant", content, reasoning_content, tool_calls, stats, note, error}
    sessionId: newSessionId(),
    controller: null,      // the AbortController of the reply being streamed
    model: null,
  };

  function newSessionId() {
    // crypto.getRandomValues works on plain http (randomUUID needs a secure context).
    const b = crypto.getRandomValues(new Uint8Array(16));
    return "webchat-" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function button(label, cls, onClick) {
    const b = el("button", cls, label);
    b.type = "button";
    b.addEventListener("click", onClick);
    return b;
  }

  function setStatus(text, isError) {
    const s = $("status");
    s.textContent = text || "";
    s.classList.toggle("error", !!isError);
  }

  // ---- API -------------------------------------------------------------------------------------

  function headers() {
    const h = { "Content-Type": "application/json", "X-Session-Id": state.sessionId };
    const key = $("api-key").value.trim();
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  async function errorText(resp) {
    try {
      const body = await resp.json();
      if (body && body.error && body.error.message) return `${resp.status}: ${body.error.message}`;
    } catch (e) { /* not JSON */ }
    return `HTTP ${resp.status}`;
  }

  async function loadModel() {
    try {
      const resp = await fetch("v1/models", { headers: headers() });
      if (resp.status === 401) {
        $("settings").hidden = false;
        setStatus("This server needs an API key: enter it in Settings.", true);
        $("api-key").focus();
        return;
      }
      if (!resp.ok) throw new Error(await errorText(resp));
      const body = await resp.json();
      state.model = body.data[0].id;
      $("model").textContent = state.model;
      setStatus("");
    } catch (e) {
      setStatus("Cannot reach the server: " + e.message, true);
    }
  }

  // The conversation as the API takes it: replies go back with their reasoning and tool calls, as the
  // server returned them, so the rendered prompt matches the state the server cached after the reply.
  function apiMessages() {
    const out = [];
    const system = $("system").value.trim();
    if (system) out.push({ role: "system", content: system });
    for (const m of state.messages) {
      if (m.role === "user") {
        out.push({ role: "user", content: m.content });
      } else if (m.content || m.reasoning_content || m.tool_calls.length) {
        const a = { role: "assistant", content: m.content };
        if (m.reasoning_content) a.reasoning_content = m.reasoning_content;
        if (m.tool_calls.length) a.tool_calls = m.tool_calls;
        out.push(a);
      }
    }
    return out;
  }

  function requestBody() {
    const body = {
      model: state.model || "pyqwen",
      messages: apiMessages(),
      stream: true,
      stream_options: { include_usage: true },
      // preserve_thinking: earlier replies are rendered as they were generated (the official template
      // otherwise drops their <think> block), so the session's cached state stays a prefix of the next
      // prompt and a follow-up prefills only the new message.
      chat_template_kwargs: { enable_thinking: $("thinking").checked, preserve_thinking: $("preserve-thinking").checked },
    };
    const num = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));
    if (num("temperature") !== null) body.temperature = num("temperature");
    if (num("max-tokens") !== null) body.max_tokens = num("max-tokens");
    if (num("seed") !== null) body.seed = num("seed");
    const tools = $("tools").value.trim();
    if (tools) {
      let parsed;
      try {
        parsed = JSON.parse(tools);
      } catch (e) {
        throw new Error("Tools is not valid JSON: " + e.message);
      }
      if (!Array.isArray(parsed)) throw new Error("Tools must be a JSON array of OpenAI tool definitions");
      body.tools = parsed;
    }
    return body;
  }

  // Yields each SSE `data:` payload of a fetch response as parsed JSON, until [DONE].
  async function* sseEvents(resp) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          yield JSON.parse(data);
        }
      }
    }
  }

  function applyDelta(msg, delta) {
    if (delta.content) msg.content += delta.content;
    if (delta.reasoning_content) msg.reasoning_content += delta.reasoning_content;
    for (const tc of delta.tool_calls || []) {
      const i = tc.index || 0;
      const call = msg.tool_calls[i] || (msg.tool_calls[i] = { id: "", type: "function", function: { name: "", arguments: "" } });
      if (tc.id) call.id = tc.id;
      if (tc.function && tc.function.name) call.function.name += tc.function.name;
      if (tc.function && tc.function.arguments) call.function.arguments += tc.function.arguments;
    }
  }

  // Streams a reply to the current conversation into a new assistant message.
  async function generate() {
    let body;
    try {
      body = requestBody();
    } catch (e) {
      setStatus(e.message, true);
      return;
    }
    const msg = { role: "assistant", content: "", reasoning_content: "", tool_calls: [], stats: null, note: "", error: "" };
    state.messages.push(msg);
    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    renderAll();
    const view = lastAssistantView();
    const t0 = performance.now();
    let firstToken = null;
    let pending = false;
    const redraw = () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        fillAssistant(view, msg, true);
        const box = $("messages");
        box.scrollTop = box.scrollHeight;
      });
    };
    try {
      const resp = await fetch("v1/chat/completions", {
        method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
      });
      if (!resp.ok) throw new Error(await errorText(resp));
      for await (const ev of sseEvents(resp)) {
        if (ev.error) throw new Error(ev.error.message || "the server reported an error");
        if (ev.choices && ev.choices.length) {
          const d = ev.choices[0].delta || {};
          if (firstToken === null && (d.content || d.reasoning_content || d.tool_calls)) firstToken = performance.now();
          applyDelta(msg, d);
          if (ev.choices[0].finish_reason) msg.finish_reason = ev.choices[0].finish_reason;
          redraw();
        }
        if (ev.usage) msg.stats = { usage: ev.usage, timings: ev.timings || null, model: ev.model };
      }
      if (!msg.stats) msg.note = "no usage reported";
    } catch (e) {
      if (controller.signal.aborted) {
        msg.note = "stopped";
      } else {
        msg.error = e.message;
      }
    } finally {
      msg.wall = { total: (performance.now() - t0) / 1000, decode: firstToken ? (performance.now() - firstToken) / 1000 : null };
      state.controller = null;
      setBusy(false);
      renderAll();
    }
  }

  // ---- actions -------------------------------------------------------------------------------------

  function send(text) {
    if (state.controller || !text.trim()) return;
    state.messages.push({ role: "user", content: text });
    generate();
  }

  function stop() {
    if (state.controller) state.controller.abort();
  }

  function regenerate() {
    if (state.controller) return;
    while (state.messages.length && state.messages[state.messages.length - 1].role === "assistant") state.messages.pop();
    if (state.messages.length) generate();
  }

  function editAndResend(index, text) {
    if (state.controller || !text.trim()) return;
    state.messages = state.messages.slice(0, index);
    send(text);
  }

  function newChat() {
    stop();
    state.messages = [];
    state.sessionId = newSessionId();
    renderAll();
    $("input").focus();
  }

  function setBusy(busy) {
    $("send").hidden = busy;
    $("stop").hidden = !busy;
    document.body.classList.toggle("busy", busy);
    for (const b of document.querySelectorAll(".msg-actions button")) b.disabled = busy;
  }

  // ---- rendering ---------------------------------------------------------------------------------------

  function statsLine(msg) {
    const parts = [];
    const s = msg.stats;
    if (s) {
      const u = s.usage;
      const cached = (u.prompt_tokens_details && u.prompt_tokens_details.cached_tokens) || 0;
      parts.push(s.model || state.model || "");
      parts.push(`prompt ${u.prompt_tokens} tokens (${cached} cached)`);
      parts.push(`${u.completion_tokens} generated`);
      const t = s.timings;
      if (t && t.prefill_seconds > 0 && t.prefilled_tokens > 0) parts.push(`prefill ${(t.prefilled_tokens / t.prefill_seconds).toFixed(0)} tok/s`);
      if (t && t.decode_seconds > 0 && u.completion_tokens > 1) {
        parts.push(`decode ${(u.completion_tokens / t.decode_seconds).toFixed(1)} tok/s`);
      } else if (msg.wall && msg.wall.decode > 0 && u.completion_tokens > 1) {
        parts.push(`decode ${(u.completion_tokens / msg.wall.decode).toFixed(1)} tok/s`);
      }
    }
    if (msg.finish_reason === "length") parts.push("stopped at max tokens");
    if (msg.note) parts.push(msg.note);
    return parts.filter(Boolean).join(" · ");
  }

  function toolCallView(call) {
    const box = el("div", "tool-call");
    box.appendChild(el("div", "tool-name", "tool call: " + call.function.name));
    let args = call.function.arguments;
    try {
      args = JSON.stringify(JSON.parse(args), null, 2);
    } catch (e) { /* still streaming, or not JSON: show as is */ }
    const pre = el("pre");
    pre.appendChild(el("code", null, args));
    box.appendChild(pre);
    return box;
  }

  // (Re)fills an assistant message's view; `live` while its reply streams.
  function fillAssistant(view, msg, live) {
    view.body.replaceChildren();
    if (msg.reasoning_content) {
      const det = el("details", "reasoning");
      // Folded by default; a reader who opened it keeps it open while the reply streams.
      det.open = view.reasoningOpen;
      det.addEventListener("toggle", () => { view.reasoningOpen = det.open; });
      det.appendChild(el("summary", null, live && !msg.content && !msg.tool_calls.length ? "Thinking…" : "Reasoning"));
      const r = el("div", "reasoning-text");
      r.appendChild(pyqwenMarkdown.render(msg.reasoning_content));
      det.appendChild(r);
      view.body.appendChild(det);
    }
    const content = el("div", "content");
    content.appendChild(pyqwenMarkdown.render(msg.content));
    view.body.appendChild(content);
    for (const call of msg.tool_calls) view.body.appendChild(toolCallView(call));
    if (msg.error) view.body.appendChild(el("div", "error", msg.error));
    view.stats.textContent = live ? "…" : statsLine(msg);
  }

  function userView(msg, index) {
    const div = el("div", "msg user");
    const body = el("div", "body");
    body.textContent = msg.content;
    div.appendChild(body);
    const actions = el("div", "msg-actions");
    actions.appendChild(button("Edit", "edit", () => {
      const ta = el("textarea", "edit-box");
      ta.value = msg.content;
      body.replaceChildren(ta);
      actions.replaceChildren(
        button("Send", "edit-send", () => editAndResend(index, ta.value)),
        button("Cancel", "edit-cancel", renderAll),
      );
      ta.focus();
    }));
    div.appendChild(actions);
    return div;
  }

  let views = [];

  function renderAll() {
    const box = $("messages");
    box.replaceChildren();
    views = [];
    const lastAssistant = state.messages.map((m) => m.role).lastIndexOf("assistant");
    state.messages.forEach((msg, i) => {
      if (msg.role === "user") {
        box.appendChild(userView(msg, i));
        return;
      }
      const div = el("div", "msg assistant");
      const view = { body: el("div", "body"), stats: el("div", "stats"), reasoningOpen: false };
      div.append(view.body, view.stats);
      const live = state.controller !== null && i === state.messages.length - 1;
      if (i === lastAssistant && !live) {
        const actions = el("div", "msg-actions");
        actions.appendChild(button("Regenerate", "regenerate", regenerate));
        div.appendChild(actions);
      }
      fillAssistant(view, msg, live);
      views.push(view);
      box.appendChild(div);
    });
    for (const b of document.querySelectorAll(".msg-actions button")) b.disabled = state.controller !== null;
    box.scrollTop = box.scrollHeight;
  }

  function lastAssistantView() {
    return views[views.length - 1];
  }

  // ---- wiring ---------------------------------------------------------------------------------------------

  function init() {
    const key = $("api-key");
    key.value = sessionStorage.getItem(KEY_STORE) || "";
    key.addEventListener("change", () => {
      sessionStorage.setItem(KEY_STORE, key.value.trim());
      loadModel();
    });
    $("settings-toggle").addEventListener("click", () => { $("settings").hidden = !$("settings").hidden; });
    $("new-chat").addEventListener("click", newChat);
    $("stop").addEventListener("click", stop);
    document.addEventListener("keydown", (e) => { if (e.key === "Escape") stop(); });
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = $("input");
      const text = input.value;
      if (!text.trim() || state.controller) return;
      input.value = "";
      send(text);
    });
    $("input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $("composer").requestSubmit();
      }
    });
    loadModel();
    renderAll();
  }

  // For the browser test and the curious: the state, and the session this conversation uses.
  window.pyqwenChat = { state, send, stop, regenerate, editAndResend, newChat };
  init();
})();
