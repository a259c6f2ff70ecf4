"""Serving the live policy: ``policy = await get_policy()``, then ``async for chunk in policy.stream(messages)``.

Backends: ``local`` (transformers in this process, see ``local.py``) and ``openai`` (any
OpenAI-compatible server, see ``openai_compat.py``). Hot swap and the process cache: ``live.py``.
Importing this package does not import torch; the local backend does, when it first loads a model.
"""

from models_registry.serving.base import Sampling, ServedPolicy, Usage
from models_registry.serving.errors import ServingError
from models_registry.serving.live import get_policy, get_policy_for, load_policy, reset, served_policy

__all__ = [
    "Sampling",
    "ServedPolicy",
    "ServingError",
    "Usage",
    "get_policy",
    "get_policy_for",
    "load_policy",
    "reset",
    "served_policy",
]
