"""The tokenization lab's tokenizer formats, below the data layer: a trained or imported
tokenizer as the engine reads, encodes and saves it (``models.py``: the interface, the character
and byte tokenizers, ``load``; ``hf.py``: Hugging Face ``tokenizers``; ``spm.py``: SentencePiece).
Training, corpora and comparison stay in ``engine.tokenlab``, which builds on these; a "file"
tokenizer of ``engine.data.tokenizers`` reads one with ``load``."""

from .models import BYTE_PIECE, CodepointTokenizer, Encoding, LabTokenizer, check_text, load, visible

__all__ = ["BYTE_PIECE", "CodepointTokenizer", "Encoding", "LabTokenizer", "check_text", "load", "visible"]
