"""Serving: a model behind an OpenAI-compatible API, with continuous batching and a paged KV cache
(engine.serving) in a serving process of its own (``manage.py serve``), and the Serving page."""
