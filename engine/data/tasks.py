"""Synthetic sequence tasks: small algorithmic problems with an exact answer, so training can be
scored by accuracy as well as loss, and different architectures compared in seconds.

An example is a prompt then an answer ending in the end mark ".":

    copy     "abcd>abcd."          the items again
    reverse  "abcd>dcba."          the items backwards
    sort     "dbca>abcd."          the items in alphabetical order
    modadd   "23+45=68."           (a + b) mod 97, two digits each; task_length is ignored
    recall   "a1b5c3?b>5."         associative recall: the value stored under the queried key

Items are drawn from 16 letters ("a".."p"); recall keys are distinct letters, so it allows at
most 16 pairs. Each task has its own fixed alphabet (its vocabulary), whatever tokenizer
the data config names. Every entry takes no arguments and offers ``alphabet``,
``max_length``, ``example_len(n)``, ``answer_len(n)``, ``count(n)`` (how many distinct
prompts exist, which bounds the held-out set) and ``sample(batch, n, generator)``, which
returns token ids (prompts (B, P), answers (B, A)) for the tokenizer ``CharTokenizer(alphabet)``.
"""

from __future__ import annotations

import math

import torch

from .tokenizers import CharTokenizer

LETTERS = "abcdefghijklmnop"
DIGITS = "0123456789"


class Task:
    alphabet = LETTERS + ">."
    max_length = 64

    def __init__(self):
        self.tokenizer = CharTokenizer(self.alphabet)

    def ids(self, chars: str) -> torch.Tensor:
        return torch.tensor(self.tokenizer.encode(chars), dtype=torch.long)

    def _mark(self, batch: int, char: str) -> torch.Tensor:
        return self.ids(char).expand(batch, 1)  # (B, 1)

    def example_len(self, n: int) -> int:
        return 2 * n + 2

    def answer_len(self, n: int) -> int:
        return n + 1

    def count(self, n: int) -> int:
        return len(LETTERS) ** n

    def answer_order(self, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, batch: int, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        letters = self.ids(LETTERS)
        items = torch.randint(len(LETTERS), (batch, n), generator=generator)  # (B, n) letter indices
        prompt = torch.cat([letters[items], self._mark(batch, ">")], dim=1)
        answer = torch.cat([letters[self.answer_order(items)], self._mark(batch, ".")], dim=1)
        return prompt, answer


class Copy(Task):
    def answer_order(self, items: torch.Tensor) -> torch.Tensor:
        return items


class Reverse(Task):
    def answer_order(self, items: torch.Tensor) -> torch.Tensor:
        return items.flip(1)


class Sort(Task):
    def answer_order(self, items: torch.Tensor) -> torch.Tensor:
        return items.sort(dim=1).values


class ModAdd(Task):
    """Addition modulo the prime 97 (the grokking task of Power et al. 2022): a finite table of
    97 * 97 examples, so the held-out examples are pairs never seen in training."""

    alphabet = DIGITS + "+=."
    modulus = 97

    def example_len(self, n: int) -> int:
        return 9  # "23+45=68."

    def answer_len(self, n: int) -> int:
        return 3

    def count(self, n: int) -> int:
        return self.modulus**2

    def _digits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x // 10, x % 10], dim=1)  # (B, 2) digit values, fixed width so "5" is "05"

    def sample(self, batch: int, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.randint(self.modulus, (batch,), generator=generator)
        b = torch.randint(self.modulus, (batch,), generator=generator)
        digits = self.ids(DIGITS)
        prompt = torch.cat(
            [digits[self._digits(a)], self._mark(batch, "+"), digits[self._digits(b)], self._mark(batch, "=")], dim=1
        )
        answer = torch.cat([digits[self._digits((a + b) % self.modulus)], self._mark(batch, ".")], dim=1)
        return prompt, answer


class Recall(Task):
    """Associative recall (Ba et al. 2016; the "MQAR" probe of Arora et al. 2023 in its
    single-query form): n key-value pairs, then a key; answer its value."""

    alphabet = LETTERS + DIGITS + "?>."
    max_length = len(LETTERS)  # keys are distinct letters

    def example_len(self, n: int) -> int:
        return 2 * n + 5  # pairs, "?", key, ">", value, "."

    def answer_len(self, n: int) -> int:
        return 2

    def count(self, n: int) -> int:
        return math.perm(len(LETTERS), n) * len(DIGITS) ** n * n

    def sample(self, batch: int, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        letters, digits = self.ids(LETTERS), self.ids(DIGITS)
        keys = torch.rand(batch, len(LETTERS), generator=generator).argsort(dim=1)[:, :n]  # (B, n) distinct
        values = torch.randint(len(DIGITS), (batch, n), generator=generator)  # (B, n)
        query = torch.randint(n, (batch, 1), generator=generator)  # (B, 1) which pair is asked for
        pairs = torch.stack([letters[keys], digits[values]], dim=2).view(batch, 2 * n)  # k1 v1 k2 v2 ...
        prompt = torch.cat(
            [pairs, self._mark(batch, "?"), letters[keys.gather(1, query)], self._mark(batch, ">")], dim=1
        )
        answer = torch.cat([digits[values.gather(1, query)], self._mark(batch, ".")], dim=1)
        return prompt, answer


TASKS = {"copy": Copy, "reverse": Reverse, "sort": Sort, "modadd": ModAdd, "recall": Recall}
