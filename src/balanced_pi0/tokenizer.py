"""Prompt tokenizers for pi0, in PaliGemma's format (backend-neutral, NumPy out).

pi0 reads the prompt as ``BOS + tokens(prompt) + tokens("\\n")``: the newline
is PaliGemma's "start of answer" marker. The prompt is cleaned first (stripped,
``_`` and newlines become spaces), right-padded with token 0 to ``max_len``
with a mask that is True on real tokens, and truncated (with a warning, as
openpi does) when it is longer.

- ``WordTokenizer``: one token per whitespace-separated word, its id a hash of the word; no
  vocabulary file, no download; the embedded default (its ids fit ``model_config.WORD_VOCAB``).
- ``SentencePieceTokenizer``: PaliGemma's own SentencePiece model from a file,
  for real openpi checkpoints (``paligemma_tokenizer.model``).

``for_model`` picks the one the model size was built for (``Pi0Config.tokenizer``), so
hashed word ids never reach PaliGemma's 257k vocabulary.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from balanced_pi0.errors import InputError

log = logging.getLogger(__name__)

# PaliGemma's special ids, kept by the word tokenizer so padding and BOS mean the same in both.
PAD_ID, EOS_ID, BOS_ID = 0, 1, 2
NUM_SPECIAL = 3


def clean_prompt(prompt: str) -> str:
    return prompt.strip().replace("_", " ").replace("\n", " ")


def _check_max_len(max_len: int) -> int:
    if max_len < 2:
        raise InputError(f"tokenizer max_len must be at least 2 (BOS and the newline marker), got {max_len}")
    return max_len


class _Tokenizer:
    max_len: int
    vocab_size: int
    bos_id: int = BOS_ID

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def tokenize(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens int32[max_len], mask bool[max_len])`` for one prompt."""
        tokens = [self.bos_id, *self._encode(clean_prompt(prompt)), *self._encode("\n")]
        if len(tokens) > self.max_len:
            log.warning("prompt of %d tokens truncated to max_len=%d: %r", len(tokens), self.max_len, prompt)
            tokens = tokens[: self.max_len]
        num_real = len(tokens)
        out = np.full(self.max_len, PAD_ID, np.int32)
        out[:num_real] = tokens
        return out, np.arange(self.max_len) < num_real

    def tokenize_batch(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens int32[B, max_len], mask bool[B, max_len])``."""
        pairs = [self.tokenize(p) for p in prompts]
        if not pairs:
            return np.zeros((0, self.max_len), np.int32), np.zeros((0, self.max_len), bool)
        tokens, masks = zip(*pairs, strict=True)
        return np.stack(tokens), np.stack(masks)


class WordTokenizer(_Tokenizer):
    """One token per whitespace-separated word (the newline marker is one more), id
    ``NUM_SPECIAL + crc32(word) % (vocab_size - NUM_SPECIAL)``: the hashing trick.

    Why not bytes: a prompt of the embedded task is 8 words, about 9 pieces of PaliGemma's
    SentencePiece model, but 43 bytes. Byte tokens made the tiny model's prefix mostly text
    (48 of 64 tokens, against 3 x 256 image tokens and ~10 text tokens in real pi0) and cost 1.65x
    its JAX train step on a quiet machine (README, *Measured*). Why not a library's word-level model: it needs a vocabulary built from the
    dataset and carried to every run and rollout; a hash needs nothing. Two words may share an id
    (probability about n^2 / (2 vocab_size) for n distinct words): ``collisions`` names them, and a
    test holds the embedded task's and Meta-World's prompts free of any.
    """

    def __init__(self, max_len: int, vocab_size: int):
        if vocab_size <= NUM_SPECIAL:
            raise InputError(f"word tokenizer: vocab_size must exceed {NUM_SPECIAL}, got {vocab_size}")
        self.max_len = _check_max_len(max_len)
        self.vocab_size = vocab_size

    def word_id(self, word: str) -> int:
        return NUM_SPECIAL + zlib.crc32(word.encode("utf-8")) % (self.vocab_size - NUM_SPECIAL)

    def _encode(self, text: str) -> list[int]:
        return [self.word_id("\n")] if text == "\n" else [self.word_id(w) for w in text.split()]

    def collisions(self, prompts: Sequence[str]) -> list[tuple[str, str]]:
        """Pairs of distinct words of ``prompts`` (or the newline marker) that share an id."""
        words = sorted({w for p in prompts for w in clean_prompt(p).split()} | {"\n"})
        seen: dict[int, str] = {}
        pairs = []
        for w in words:
            i = self.word_id(w)
            if i in seen:
                pairs.append((seen[i], w))
            else:
                seen[i] = w
        return pairs


class SentencePieceTokenizer(_Tokenizer):
    """PaliGemma's SentencePiece model read from ``model_path`` (no download)."""

    def __init__(self, model_path: str | Path, max_len: int):
        import sentencepiece

        path = Path(model_path)
        if not path.is_file():
            raise InputError(f"SentencePiece model not found: {path}")
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_proto=path.read_bytes())
        except RuntimeError as err:
            raise InputError(f"{path} is not a SentencePiece model: {err}") from None
        self.max_len = _check_max_len(max_len)
        self.vocab_size = self._sp.vocab_size()
        self.bos_id = self._sp.bos_id()  # 2 in PaliGemma's model

    def _encode(self, text: str) -> list[int]:
        return self._sp.encode(text)


def for_model(model) -> _Tokenizer:
    """The tokenizer of a run's ``model`` params section: the one its size's vocabulary belongs to.

    Raises ``InputError`` naming ``model.tokenizer_path`` when a SentencePiece size has no model
    file, or a word-hashing size is given one (no knob is silently ignored).
    """
    from balanced_pi0.model_config import get_config

    config = get_config(model.size)
    path = model.tokenizer_path
    if config.tokenizer == "word":
        if path is not None:
            raise InputError(
                f"model.tokenizer_path: model size {model.size!r} uses the word tokenizer and reads no "
                f"tokenizer file; set it to null (got {path!r})"
            )
        return WordTokenizer(model.max_token_len, config.vocab_size)
    if path is None:
        raise InputError(
            f"model.tokenizer_path: model size {model.size!r} has PaliGemma's vocabulary and needs its "
            "SentencePiece model (paligemma_tokenizer.model); set model.tokenizer_path to that file"
        )
    if not Path(path).is_file():
        raise InputError(f"model.tokenizer_path: SentencePiece model not found: {path}")
    try:
        tok = SentencePieceTokenizer(path, model.max_token_len)
    except InputError as e:
        raise InputError(f"model.tokenizer_path: {e}") from None
    if tok.vocab_size > config.vocab_size:
        raise InputError(
            f"model.tokenizer_path: {path} has {tok.vocab_size} pieces, more than model size "
            f"{model.size!r}'s vocabulary of {config.vocab_size}"
        )
    return tok
