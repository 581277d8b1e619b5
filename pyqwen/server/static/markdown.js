// A small Markdown renderer for model replies: code fences, inline code, bold, italic, headings, lists,
// paragraphs and http(s) links. Nothing else.
//
// Model output is untrusted, so this never parses text as HTML: it builds DOM nodes with createElement
// and puts all text in with createTextNode / textContent, which the browser stores as text (an
// `<img onerror=...>` in a reply shows as those characters). Links keep only http: and https: URLs.
// A fence that is still open (the reply is streaming) renders as a code block up to the end.
"use strict";

(function () {
  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
  const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const ITEM = /^( *)([-*+]|\d{1,9}[.)])\s+(.*)$/;

  // Inline spans, earliest match wins; code first so that nothing inside backticks is interpreted.
  const INLINE = [
    ["code", /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/],
    ["link", /\[([^\]\n]+)\]\(\s*([^\s()]+)\s*\)/],
    ["strong", /\*\*(?=\S)([\s\S]*?\S)\*\*|__(?=\S)([\s\S]*?\S)__(?!\w)/],
    ["em", /\*(?=[^\s*])([^*]*?[^\s*])\*|(?<!\w)_(?=[^\s_])([^_]*?[^\s_])_(?!\w)/],
  ];

  function el(tag, cls) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    return e;
  }

  function safeUrl(href) {
    try {
      const u = new URL(href);
      return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
    } catch (e) {
      return null;
    }
  }

  function inline(text, parent) {
    while (text) {
      let best = null;
      for (const [kind, re] of INLINE) {
        const m = re.exec(text);
        if (m && (best === null || m.index < best.m.index)) best = { kind, m };
      }
      if (best === null) {
        parent.appendChild(document.createTextNode(text));
        return;
      }
      const m = best.m;
      if (m.index > 0) parent.appendChild(document.createTextNode(text.slice(0, m.index)));
      if (best.kind === "code") {
        const c = el("code");
        c.textContent = m[2].length > 2 && m[2].startsWith(" ") && m[2].endsWith(" ") ? m[2].slice(1, -1) : m[2];
        parent.appendChild(c);
      } else if (best.kind === "link") {
        const href = safeUrl(m[2]);
        if (href === null) {
          parent.appendChild(document.createTextNode(m[0]));     // javascript:, data:, relative: as text
        } else {
          const a = el("a");
          a.href = href;
          a.target = "_blank";
          a.rel = "noopener noreferrer";
          inline(m[1], a);
          parent.appendChild(a);
        }
      } else {
        const e = el(best.kind);
        inline(m[1] !== undefined ? m[1] : m[2], e);
        parent.appendChild(e);
      }
      text = text.slice(m.index + m[0].length);
    }
  }

  function lines(parent, texts) {
    texts.forEach((t, i) => {
      if (i > 0) parent.appendChild(el("br"));
      inline(t, parent);
    });
  }

  function codeBlock(lang, body) {
    const pre = el("pre");
    const code = el("code");
    if (lang) {
      code.className = "language-" + lang;
      pre.dataset.lang = lang;
    }
    code.textContent = body;
    pre.appendChild(code);
    return pre;
  }

  function isBlockStart(line) {
    return FENCE.test(line) || HEADING.test(line) || ITEM.test(line);
  }

  // text -> DocumentFragment
  function render(text) {
    const out = document.createDocumentFragment();
    const src = String(text).replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    while (i < src.length) {
      const line = src[i];
      let m;
      if ((m = FENCE.exec(line))) {
        const mark = m[1];
        const body = [];
        i++;
        while (i < src.length) {
          const t = src[i].trim();
          if (t.length >= mark.length && t[0] === mark[0] && /^(`+|~+)$/.test(t)) break;
          body.push(src[i]);
          i++;
        }
        out.appendChild(codeBlock(m[2], body.join("\n")));
        i++;                                     // the closing fence (past the end if still open)
      } else if ((m = HEADING.exec(line))) {
        const h = el("h" + m[1].length);
        inline(m[2], h);
        out.appendChild(h);
        i++;
      } else if ((m = ITEM.exec(line))) {
        const ordered = /\d/.test(m[2][0]);
        const list = el(ordered ? "ol" : "ul");
        if (ordered && parseInt(m[2], 10) !== 1) list.start = parseInt(m[2], 10);
        let item = null;
        let itemLines = [];
        const flush = () => {
          if (item) {
            lines(item, itemLines);
            list.appendChild(item);
          }
        };
        while (i < src.length) {
          const im = ITEM.exec(src[i]);
          if (im && /\d/.test(im[2][0]) === ordered) {
            flush();
            item = el("li");
            itemLines = [im[3]];
          } else if (src[i].trim() !== "" && /^\s+/.test(src[i]) && !FENCE.test(src[i])) {
            itemLines.push(src[i].trim());           // an indented continuation of the item
          } else {
            break;
          }
          i++;
        }
        flush();
        out.appendChild(list);
      } else if (line.trim() === "") {
        i++;
      } else {
        const para = [];
        while (i < src.length && src[i].trim() !== "" && (para.length === 0 || !isBlockStart(src[i]))) {
          para.push(src[i]);
          i++;
        }
        const p = el("p");
        lines(p, para);
        out.appendChild(p);
      }
    }
    return out;
  }

  window.pyqwenMarkdown = { render };
})();
