"""Prompt tokenizers for pi0, in PaliGemma's format (backend-neutral, NumPy out).

pi0 reads the prompt as ``BOS + tokens(prompt) + tokens("\\n")``: the newline
is PaliGemma's "start of answer" marker. The prompt is cleaned first (stripped,
``_`` and newlines become spaces), right-padded with token 0 to ``max_len``
with a mask that is True on real tokens, and truncated (with a warning, as
openpi does) when it is longer.

- ``ByteTokenizer``: UTF-8 bytes, no download; the embedded default (its ids fit
  ``model_config.BYTE_VOCAB``).
- ``SentencePieceTokenizer``: PaliGemma's own SentencePiece model from a file,
  for real openpi checkpoints (``paligemma_tokenizer.model``).

``for_model`` picks the one the model size was built for (``Pi0Config.tokenizer``), so
byte ids never reach PaliGemma's 257k vocabulary.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from balanced_pi0.errors import InputError

log = logging.getLogger(__name__)

# PaliGemma's special ids, kept by the byte tokenizer so padding and BOS mean the same in both.
PAD_ID, EOS_ID, BOS_ID = 0, 1, 2
BYTE_OFFSET = 3


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


class ByteTokenizer(_Tokenizer):
    """UTF-8 bytes shifted past PaliGemma's pad/eos/bos ids; needs no vocabulary file."""

    vocab_size = BYTE_OFFSET + 256

    def __init__(self, max_len: int):
        self.max_len = _check_max_len(max_len)

    def _encode(self, text: str) -> list[int]:
        return [b + BYTE_OFFSET for b in text.encode("utf-8")]


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
    file, or a byte size is given one (no knob is silently ignored).
    """
    from balanced_pi0.model_config import get_config

    config = get_config(model.size)
    path = model.tokenizer_path
    if config.tokenizer == "byte":
        if path is not None:
            raise InputError(
                f"model.tokenizer_path: model size {model.size!r} uses the byte tokenizer and reads no "
                f"tokenizer file; set it to null (got {path!r})"
            )
        return ByteTokenizer(model.max_token_len)
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
