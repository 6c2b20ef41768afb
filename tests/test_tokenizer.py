"""Prompt tokenizers: PaliGemma's layout BOS + prompt + "\\n", zero-padded, with a real-token mask."""

from __future__ import annotations

import numpy as np
import pytest

from balanced_pi0.errors import InputError
from balanced_pi0.model_config import BYTE_VOCAB
from balanced_pi0.tokenizer import ByteTokenizer, SentencePieceTokenizer

BOS, PAD = 2, 0


def test_byte_tokens_are_bos_bytes_newline_then_padding():
    tokens, mask = ByteTokenizer(max_len=12).tokenize("  pick_up\n")
    # cleaned to "pick up"; bytes shifted by 3 past pad/eos/bos
    expected = [BOS] + [b + 3 for b in b"pick up"] + [ord("\n") + 3]
    assert tokens.dtype == np.int32 and mask.dtype == np.bool_
    np.testing.assert_array_equal(tokens, expected + [PAD] * (12 - len(expected)))
    np.testing.assert_array_equal(mask, [True] * len(expected) + [False] * (12 - len(expected)))


def test_byte_ids_fit_the_tiny_vocabulary():
    tokens, _ = ByteTokenizer(max_len=64).tokenize("ÿ€ unicode ✓ " + "".join(map(chr, range(32, 127))))
    assert tokens.max() < BYTE_VOCAB


def test_long_prompt_is_truncated_to_max_len():
    tokens, mask = ByteTokenizer(max_len=5).tokenize("a long instruction")
    np.testing.assert_array_equal(tokens, [BOS] + [b + 3 for b in b"a lo"])
    assert mask.all()


def test_batch_stacks_prompts():
    tok = ByteTokenizer(max_len=8)
    tokens, mask = tok.tokenize_batch(["go", "reach left"])
    assert tokens.shape == mask.shape == (2, 8)
    np.testing.assert_array_equal(tokens[0], tok.tokenize("go")[0])
    assert mask.sum(1).tolist() == [4, 8]


def test_max_len_too_small_is_an_input_error():
    with pytest.raises(InputError, match="max_len"):
        ByteTokenizer(max_len=1)


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    import sentencepiece as spm  # a locked dependency: these tests never skip

    root = tmp_path_factory.mktemp("spm")
    corpus = root / "corpus.txt"
    words = ["pick", "up", "the", "red", "cube", "place", "it", "on", "left", "right", "table", "reach"]
    rng = np.random.default_rng(0)
    corpus.write_text("\n".join(" ".join(rng.choice(words, 6)) for _ in range(300)))
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(root / "tiny"),
        vocab_size=30,
        bos_id=2,
        eos_id=1,
        pad_id=0,
        unk_id=3,
        user_defined_symbols=["\n"],
        remove_extra_whitespaces=False,
        num_threads=1,
        minloglevel=2,
    )
    return root / "tiny.model"


def test_sentencepiece_follows_paligemma_layout(spm_model):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_model))
    tokens, mask = SentencePieceTokenizer(spm_model, max_len=24).tokenize("Pick_up the red cube\n")
    expected = sp.encode("Pick up the red cube", add_bos=True) + sp.encode("\n")
    assert expected[0] == BOS and len(expected) < 24
    np.testing.assert_array_equal(tokens[: len(expected)], expected)
    assert (tokens[len(expected) :] == PAD).all()
    assert mask.sum() == len(expected)


def test_sentencepiece_missing_or_bad_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        SentencePieceTokenizer(tmp_path / "nope.model", max_len=8)
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match=r"bad\.model"):
        SentencePieceTokenizer(bad, max_len=8)


def _model(**model):
    from balanced_pi0 import config

    return config.from_dict({"model": model})


def test_pi0_size_reads_paligemmas_sentencepiece_model_from_params(spm_model, tmp_path):
    """Full size: PolicyIO tokenizes with the SentencePiece model of model.tokenizer_path, not bytes."""
    import json

    from balanced_pi0.policy_io import PolicyIO
    from balanced_pi0.tokenizer import for_model

    params = _model(size="pi0", tokenizer_path=str(spm_model))
    tok = for_model(params.model)
    assert isinstance(tok, SentencePieceTokenizer)
    doc = {k: [0.0] * 23 if k == "mean" else [1.0] * 23 for k in ("mean", "std", "q01", "q99")}
    (tmp_path / "standard.json").write_text(json.dumps({"norm_stats": {"state": doc, "actions": doc}}))
    io = PolicyIO.from_params(params, tmp_path)
    prompt = "reach the red cube"
    np.testing.assert_array_equal(
        io.tokenize(prompt)[0], SentencePieceTokenizer(spm_model, 48).tokenize(prompt)[0]
    )
    assert not np.array_equal(io.tokenize(prompt)[0], ByteTokenizer(48).tokenize(prompt)[0])
    assert isinstance(for_model(_model(size="tiny").model), ByteTokenizer)


def test_pi0_size_without_a_tokenizer_model_stops_naming_the_param(tmp_path):
    from balanced_pi0.policy_io import PolicyIO

    with pytest.raises(InputError, match=r"model\.tokenizer_path: model size 'pi0' .* SentencePiece"):
        PolicyIO.from_params(_model(size="pi0"), tmp_path)  # before the (absent) norm stats are read
    missing = tmp_path / "paligemma_tokenizer.model"
    with pytest.raises(InputError, match=r"model\.tokenizer_path: SentencePiece model not found"):
        PolicyIO.from_params(_model(size="pi0", tokenizer_path=str(missing)), tmp_path)


def test_byte_size_given_a_tokenizer_file_is_an_error(spm_model):
    from balanced_pi0.tokenizer import for_model

    with pytest.raises(InputError, match=r"model\.tokenizer_path: model size 'tiny' uses the byte tokenizer"):
        for_model(_model(size="tiny", tokenizer_path=str(spm_model)).model)
