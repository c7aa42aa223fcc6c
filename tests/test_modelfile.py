"""The Ollama Modelfile written next to the GGUF: ChatML and the fallback prompt format (a base student)
get a TEMPLATE Ollama can use; other templates are left to the GGUF's metadata."""

from __future__ import annotations

from valign_edge.export import modelfile
from valign_edge.training.batching import FALLBACK_CHAT_TEMPLATE


def test_fallback_format_gets_its_own_template_and_stop():
    text = modelfile("model-q8_0.gguf", FALLBACK_CHAT_TEMPLATE)
    assert text.startswith("FROM ./model-q8_0.gguf\n")
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    # the same turns as the Jinja template the student was trained under, ending with the answer prompt
    assert 'eq .Role "user" }}Question: {{ .Content }}\n' in template
    assert 'eq .Role "assistant" }}Answer: {{ .Content }}\n' in template
    assert template.endswith("{{- end }}Answer:")
    assert 'PARAMETER stop "Question:"' in text  # an untrained base model goes on with the next question


def test_chatml_gets_a_chatml_template_and_others_the_gguf_metadata():
    chatml = modelfile("m.gguf", "{% for m in messages %}<|im_start|>{{ m['role'] }}...{% endfor %}")
    assert 'PARAMETER stop "<|im_end|>"' in chatml and "Question:" not in chatml
    other = modelfile("m.gguf", "{{ bos_token }}<start_of_turn>user ...")
    assert "TEMPLATE" not in other and "read from the GGUF's metadata" in other
