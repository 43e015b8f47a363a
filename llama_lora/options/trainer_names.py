"""The learning-rate schedulers and optimizers the installed transformers accepts, from its own enums.

The options are checked before the backend's import hook runs, and Unsloth must patch transformers before anything
imports it; so the names are read from transformers' source files (`SchedulerType` in trainer_utils.py,
`OptimizerNames` in training_args.py) with `ast`, which executes none of it. tests/test_config_validation.py checks
that the names read this way equal the imported enums' values.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path


@functools.cache
def enum_values(module: str, enum: str) -> tuple[str, ...]:
    """The string values of `class <enum>` in transformers/<module>.py, in declaration order."""
    spec = importlib.util.find_spec("transformers")  # a top-level package: found without importing it
    if spec is None or not spec.submodule_search_locations:
        return ()
    source = Path(spec.submodule_search_locations[0]) / f"{module}.py"
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    body = next((node.body for node in tree.body if isinstance(node, ast.ClassDef) and node.name == enum), [])
    return tuple(node.value.value for node in body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str))


def schedulers() -> tuple[str, ...]:
    """Every `lr_scheduler_type` the installed transformers knows."""
    return enum_values("trainer_utils", "SchedulerType")


def optimizers() -> tuple[str, ...]:
    """Every `optim` name the installed transformers knows."""
    return enum_values("training_args", "OptimizerNames")
