"""A model's own Python code runs only when the command being run says --trust-remote-code.

A model folder or hub repository may ship Python modules (config.json's or tokenizer_config.json's `auto_map`)
that transformers imports when told `trust_remote_code=True`: someone else's code, running with the user's rights.
So the permission is never read from a file a folder can carry (a `--config` YAML, a run folder's config.yaml),
since a shared or downloaded folder could set it; it is a flag of each command, and a saved value asking for it is
refused with a message naming that flag.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import click

from llama_lora.errors import UsageError

FLAG = "--trust-remote-code"
NAME = "trust_remote_code"
HELP = ("Allow the model to run Python code it ships (config.json's auto_map). Off by default: it executes someone "
        "else's code. Only this flag turns it on; config files and run folders cannot.")


def option(command: Callable[..., Any]) -> Callable[..., Any]:
    """The --trust-remote-code flag of a click command (its parameter: trust_remote_code)."""
    return click.option(FLAG, NAME, is_flag=True, default=False, help=HELP)(command)


def saved_request_refused(where: str) -> str:
    """Why a file asking to run the model's code is refused, and what the user does instead."""
    return (f"{where}: trust_remote_code: true asks to run the model's own Python code, which no file can allow (a "
            f"shared or downloaded one could set it). Give {FLAG} on the command line if you trust that code")


ADVICE = f"Read that code, and add {FLAG} if you trust it"


def needs_flag(err: BaseException, model: str, advice: str = ADVICE) -> str | None:
    """The message for transformers refusing a model that cannot load without its own code, or None for other
    errors (transformers says "contains custom code which must be executed")."""
    if "custom code" not in str(err) or "trust_remote_code" not in str(err):
        return None
    return f"{model}: it ships its own Python code and cannot load without running it (its auto_map). {advice}"


@contextlib.contextmanager
def explained(model: str, advice: str = ADVICE) -> Iterator[None]:
    """Inside: transformers refusing a model that needs its own code becomes a UsageError naming the flag."""
    try:
        yield
    except ValueError as err:
        message = needs_flag(err, model, advice)
        if message is None:
            raise
        raise UsageError(message) from err
