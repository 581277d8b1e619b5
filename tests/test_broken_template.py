"""A GGUF whose tokenizer.chat_template does not compile still loads (with a warning) and completes raw
text; chat fails with ChatTemplateError, a PyqwenError that says what is wrong."""

from __future__ import annotations

import pytest

import pyqwen
from pq_testutil import HF_MODELS
from test_gguf_errors import rewrite


@pytest.mark.parametrize("source", ["{% for m in messages %}{{ m.content }", "{{ 1 +* }}", "{% endfor %}",
                                    "\udcff{{"[1:] + "{% if %}"])
def test_broken_template_loads_and_completes(gguf_cache, tmp_path, source):
    p = rewrite(gguf_cache(HF_MODELS[0], "f32"), tmp_path / "broken.gguf", set_str={"tokenizer.chat_template": source})
    with pytest.warns(RuntimeWarning, match="chat_template"):
        m = pyqwen.Model.load(p, threads=1, n_ctx=128)
    gen = m.generate("Hello there", max_tokens=3, temperature=0)
    assert len([t for c in gen for t in c.token_ids]) == 3
    with pytest.raises(pyqwen.ChatTemplateError, match="chat template") as ei:
        m.chat([{"role": "user", "content": "hi"}], max_tokens=2)
    assert isinstance(ei.value, pyqwen.PyqwenError)


def test_chat_template_error_is_a_pyqwen_error():
    from pyqwen.chat import ChatTemplate, ChatTemplateError

    assert ChatTemplateError is pyqwen.ChatTemplateError and issubclass(ChatTemplateError, pyqwen.PyqwenError)
    with pytest.raises(pyqwen.PyqwenError):
        ChatTemplate("{{ raise_exception('no') }}").render([{"role": "user", "content": "x"}])
