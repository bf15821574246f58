"""The one exception a caller needs to catch for bad input (its own module so that both
``config`` and ``data`` can raise it without importing each other)."""

from __future__ import annotations


class ConfigError(Exception):
    """Invalid job configuration. ``errors`` maps dotted field names ("model.n_head",
    "data.path", ...) to messages that name the field, the value and what is allowed;
    every problem found is reported, not only the first."""

    def __init__(self, errors: dict[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{field}: {msg}" for field, msg in self.errors.items()))
