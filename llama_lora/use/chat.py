"""`use_adapter.py chat`: a multi-turn conversation with a run's model in the terminal.

The whole history is rendered with the run's chat template for every answer, so each answer sees the turns before
it. Lines starting with "/" are commands; everything else is a user turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llama_lora.use.inference import Message, with_system

HELP = "/reset forget the conversation, /system TEXT set the system prompt (/system alone: the template's), /exit"


@dataclass
class Conversation:
    """The turns so far and the system prompt (None: the chat template's own default)."""

    system: str | None = None
    turns: list[Message] = field(default_factory=list)

    def messages(self, user: str) -> list[Message]:
        """What the model is shown to answer `user`: system prompt, every earlier turn, the new user turn."""
        return with_system([*self.turns, {"role": "user", "content": user}], self.system)

    def add(self, user: str, answer: str) -> None:
        self.turns += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def command(conversation: Conversation, line: str) -> str | None:
    """Apply a /command and return what to tell the user; None when the line is /exit."""
    name, _, argument = line.strip().partition(" ")
    if name in ("/exit", "/quit"):
        return None
    if name == "/reset":
        conversation.turns.clear()
        return "[conversation reset]"
    if name == "/system":
        conversation.system = argument.strip() or None
        conversation.turns.clear()  # a new system prompt starts a new conversation, as it would in training data
        return f"[system prompt: {conversation.system or 'the chat template default'}; conversation reset]"
    return f"[unknown command {name}: {HELP}]"
