"""Shared pytest fixtures around a real llama.cpp server.

Use from any test module (or register once in conftest.py with ``pytest_plugins = ["llama_fixtures"]``)::

    from llama_fixtures import llama_server  # noqa: F401

    def test_something(llama_server):
        openai.OpenAI(base_url=llama_server.base_url, api_key="none")...
"""
from __future__ import annotations

import pytest

from distill.llamacpp import LlamaServer, smollm2_gguf

SMOLLM2_ALIAS = "smollm2"
SLOTS = 2
SLOT_CTX = 4096


@pytest.fixture(scope="session")
def llama_server():
    """llama-server with the real SmolLM2-135M-Instruct Q4_1 GGUF, 2 slots of 4096 tokens, for the whole session.

    Yields the running :class:`distill.llamacpp.LlamaServer` (``.base_url`` = ``http://127.0.0.1:PORT/v1``,
    ``.url`` = server root, model name ``smollm2``). A missing llama.cpp is an error, not a skip.
    """
    with LlamaServer(smollm2_gguf(), n_parallel=SLOTS, ctx=SLOTS * SLOT_CTX, alias=SMOLLM2_ALIAS) as server:
        yield server
