"""Prompt tokenizers: PaliGemma's layout BOS + prompt + "\\n", zero-padded, with a real-token mask."""

from __future__ import annotations

import numpy as np
import pytest

from balanced_pi0.errors import InputError
from balanced_pi0.model_config import SIZES, WORD_VOCAB
from balanced_pi0.tokenizer import SentencePieceTokenizer, WordTokenizer

BOS, PAD = 2, 0


def crc_id(word: str, vocab: int = WORD_VOCAB) -> int:
    import zlib

    return 3 + zlib.crc32(word.encode()) % (vocab - 3)


def test_word_tokens_are_bos_words_newline_then_padding():
    tokens, mask = WordTokenizer(max_len=8, vocab_size=WORD_VOCAB).tokenize("  pick_up the\ncube \n")
    # cleaned to "pick up the cube"; one hashed id per word, past pad/eos/bos
    expected = [BOS, crc_id("pick"), crc_id("up"), crc_id("the"), crc_id("cube"), crc_id("\n")]
    assert tokens.dtype == np.int32 and mask.dtype == np.bool_
    np.testing.assert_array_equal(tokens, expected + [PAD] * 2)
    np.testing.assert_array_equal(mask, [True] * 6 + [False] * 2)


def test_word_ids_fit_the_vocabulary_and_skip_the_special_ids():
    tok = WordTokenizer(max_len=64, vocab_size=50)
    tokens, mask = tok.tokenize("ÿ€ unicode ✓ " + " ".join(map(chr, range(33, 127))))
    assert tokens[1:][mask[1:]].min() >= 3 and tokens.max() < 50


def test_the_prompts_of_every_shipped_task_share_no_word_id():
    """The embedded task's and all 50 Meta-World tasks' words get distinct ids, and each prompt fits
    the tiny model's max_token_len (BOS + words + newline): no prompt is cut, no two words merge."""
    from balanced_pi0.sim import metaworld, robot

    prompts = [f"reach the {c} cube with the {h} hand" for c in robot.COLOURS for h in robot.SIDES]
    prompts += list(metaworld.task_config()["TASK_DESCRIPTIONS"].values())
    tiny = SIZES["tiny"]
    tok = WordTokenizer(tiny.max_token_len, tiny.vocab_size)
    assert tok.collisions(prompts) == []
    assert max(len(p.split()) for p in prompts) + 2 <= tiny.max_token_len
    # and the check can fail: a small vocabulary merges words
    assert WordTokenizer(16, 64).collisions(prompts)


def test_long_prompt_is_truncated_to_max_len():
    tokens, mask = WordTokenizer(max_len=3, vocab_size=WORD_VOCAB).tokenize("a long instruction")
    np.testing.assert_array_equal(tokens, [BOS, crc_id("a"), crc_id("long")])
    assert mask.all()


def test_batch_stacks_prompts():
    tok = WordTokenizer(max_len=8, vocab_size=WORD_VOCAB)
    tokens, mask = tok.tokenize_batch(["go", "reach the left cube"])
    assert tokens.shape == mask.shape == (2, 8)
    np.testing.assert_array_equal(tokens[0], tok.tokenize("go")[0])
    assert mask.sum(1).tolist() == [3, 6]


def test_max_len_or_vocabulary_too_small_is_an_input_error():
    with pytest.raises(InputError, match="max_len"):
        WordTokenizer(max_len=1, vocab_size=WORD_VOCAB)
    with pytest.raises(InputError, match="vocab_size"):
        WordTokenizer(max_len=8, vocab_size=3)


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
        io.tokenize(prompt)[0],
        SentencePieceTokenizer(spm_model, params.model.max_token_len).tokenize(prompt)[0],
    )
    assert not np.array_equal(
        io.tokenize(prompt)[0], WordTokenizer(params.model.max_token_len, WORD_VOCAB).tokenize(prompt)[0]
    )
    assert isinstance(for_model(_model(size="tiny").model), WordTokenizer)


def test_pi0_size_without_a_tokenizer_model_stops_naming_the_param(tmp_path):
    from balanced_pi0.policy_io import PolicyIO

    with pytest.raises(InputError, match=r"model\.tokenizer_path: model size 'pi0' .* SentencePiece"):
        PolicyIO.from_params(_model(size="pi0"), tmp_path)  # before the (absent) norm stats are read
    missing = tmp_path / "paligemma_tokenizer.model"
    with pytest.raises(InputError, match=r"model\.tokenizer_path: SentencePiece model not found"):
        PolicyIO.from_params(_model(size="pi0", tokenizer_path=str(missing)), tmp_path)


def test_word_size_given_a_tokenizer_file_is_an_error(spm_model):
    from balanced_pi0.tokenizer import for_model

    with pytest.raises(InputError, match=r"model\.tokenizer_path: model size 'tiny' uses the word tokenizer"):
        for_model(_model(size="tiny", tokenizer_path=str(spm_model)).model)
