"""Tests for enas_rnn.corpus: loading, vocabulary, batching, BPTT windows, root resolution."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_corpus

from enas_rnn.corpus import (
    Corpus,
    DataError,
    Vocabulary,
    batchify,
    bptt_windows,
    get_batch,
    load_corpus,
    resolve_root,
    sample_seq_len,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _ptb_root() -> Path:
    """Real PTB folder: $ENAS_RNN_DATA/ptb, else the shared data folder next to the repo."""
    base = Path(os.environ.get("ENAS_RNN_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not base.is_absolute():
        base = REPO_ROOT / base
    return base / "ptb"


@pytest.fixture(scope="module")
def ptb() -> Corpus:
    root = _ptb_root()
    if not all((root / f"{s}.txt").is_file() for s in ("train", "valid", "test")):
        pytest.skip(f"PTB not found at {root}: set ENAS_RNN_DATA to the folder that contains ptb/")
    return load_corpus(root)


def _write_corpus(root: Path, train: str, valid: str, test: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (root / f"{name}.txt").write_text(text, encoding="utf-8")
    return root


# ---------------------------------------------------------------------------------------------------------------
# Real PTB
# ---------------------------------------------------------------------------------------------------------------


def test_ptb_counts(ptb: Corpus) -> None:
    assert ptb.train.numel() == 929_589
    assert ptb.valid.numel() == 73_760
    assert ptb.test.numel() == 82_430
    assert len(ptb.vocab) == 10_000
    for split in (ptb.train, ptb.valid, ptb.test):
        assert split.dtype == torch.int64 and split.dim() == 1
        assert 0 <= int(split.min()) and int(split.max()) < len(ptb.vocab)


def test_ptb_unk_and_eos(ptb: Corpus) -> None:
    unk, eos = ptb.vocab.index("<unk>"), ptb.vocab.index("<eos>")
    # Counts from SOURCES.md: <unk> occurrences per split, and one <eos> per line.
    assert int((ptb.train == unk).sum()) == 45_020
    assert int((ptb.valid == unk).sum()) == 3_485
    assert int((ptb.test == unk).sum()) == 4_794
    assert int((ptb.train == eos).sum()) == 42_068
    assert int((ptb.valid == eos).sum()) == 3_370
    assert int((ptb.test == eos).sum()) == 3_761


def test_ptb_with_a_bom_keeps_10000_words(ptb: Corpus, tmp_path: Path) -> None:
    # PTB's first line starts with a space, so a BOM read as text would be a word of its own (10,001).
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.txt").write_bytes(b"\xef\xbb\xbf" + (ptb.root / f"{split}.txt").read_bytes())
    bommed = load_corpus(tmp_path)
    assert len(bommed.vocab) == 10_000
    assert torch.equal(bommed.train, ptb.train)


# ---------------------------------------------------------------------------------------------------------------
# Tiny corpora
# ---------------------------------------------------------------------------------------------------------------


def test_unknown_words_become_unk_added_when_missing(tmp_path: Path) -> None:
    root = _write_corpus(tmp_path / "c", "a b\nb c\n", "a zebra\n", "yak c\n")
    corpus = load_corpus(root)
    vocab = corpus.vocab
    # train words in first-occurrence order, <eos> after the first line, <unk> appended for the OOV words.
    assert vocab.idx2word == ["a", "b", "<eos>", "c", "<unk>"]
    unk = vocab.index("<unk>")
    assert corpus.valid.tolist() == [vocab.index("a"), unk, vocab.index("<eos>")]
    assert corpus.test.tolist() == [unk, vocab.index("c"), vocab.index("<eos>")]
    assert vocab.index("never-seen") == unk


def test_unk_not_added_when_not_needed(tmp_path: Path) -> None:
    root = _write_corpus(tmp_path / "c", "a b\n", "b a\n", "a\n")
    corpus = load_corpus(root)
    assert "<unk>" not in corpus.vocab
    assert len(corpus.vocab) == 3
    with pytest.raises(KeyError):
        corpus.vocab.index("zebra")


def test_unk_from_train_is_reused(tmp_path: Path) -> None:
    root = _write_corpus(tmp_path / "c", "<unk> a\n", "zebra\n", "a\n")
    corpus = load_corpus(root)
    assert corpus.vocab.idx2word == ["<unk>", "a", "<eos>"]
    assert corpus.valid.tolist() == [0, 2]


def test_empty_lines_give_one_eos(tmp_path: Path) -> None:
    # Lines: " a b", "", "   ", " c" (no trailing newline) -> 4 lines -> 4 <eos>.
    root = _write_corpus(tmp_path / "c", " a b\n\n   \n c", "\n\n", "a\r\nb\r\n")
    corpus = load_corpus(root)
    v = corpus.vocab
    eos = v.index("<eos>")
    assert corpus.train.tolist() == [v.index("a"), v.index("b"), eos, eos, eos, v.index("c"), eos]
    assert corpus.valid.tolist() == [eos, eos]
    assert corpus.test.tolist() == [v.index("a"), eos, v.index("b"), eos]  # CRLF is one line break


def test_leading_bom_is_not_a_word(tmp_path: Path) -> None:
    # A byte-order mark before the first word (Windows editors write one) is dropped in every split, so the
    # vocabulary and the streams are those of the same files without it; a BOM'd PTB stays at 10,000 words.
    plain = write_tiny_corpus(tmp_path / "plain")
    bommed = tmp_path / "bom"
    bommed.mkdir()
    for split in ("train", "valid", "test"):
        (bommed / f"{split}.txt").write_bytes(b"\xef\xbb\xbf" + (plain / f"{split}.txt").read_bytes())
    want, got = load_corpus(plain), load_corpus(bommed)
    assert got.vocab == want.vocab
    assert not any("\ufeff" in w for w in got.vocab.idx2word)
    for split in ("train", "valid", "test"):
        assert torch.equal(got.split(split), want.split(split)), split


def test_bom_glued_to_a_word_is_dropped_too(tmp_path: Path) -> None:
    # Without a leading space the BOM would be glued to the first word ('\ufeffa'), a second spelling of 'a'.
    root = _write_corpus(tmp_path / "c", "\ufeffa b\na\n", "\ufeffa\n", "b\n")
    corpus = load_corpus(root)
    assert corpus.vocab.idx2word == ["a", "b", "<eos>"]
    assert corpus.valid.tolist() == [0, 2]


def test_missing_files_message(tmp_path: Path) -> None:
    root = tmp_path / "nowhere" / "ptb"
    with pytest.raises(DataError) as info:
        load_corpus(root)
    msg = str(info.value)
    assert str(root) in msg
    for name in ("train.txt", "valid.txt", "test.txt"):
        assert name in msg
    assert "ENAS_RNN_DATA" in msg and "data.root" in msg
    assert "download_ptb.py" in msg and "data.download=true" in msg


def test_partially_missing_names_the_missing_file(tmp_path: Path) -> None:
    root = _write_corpus(tmp_path / "c", "a\n", "a\n", "a\n")
    (root / "test.txt").unlink()
    with pytest.raises(DataError, match=r"missing: test\.txt"):
        load_corpus(root)


def test_download_for_non_ptb_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="only available for ptb"):
        load_corpus(tmp_path / "wt2", download=True, name="wikitext-2")


def test_vocabulary_roundtrip() -> None:
    vocab = Vocabulary(["x", "<unk>", "y"])
    assert vocab.add("y") == 2 and vocab.add("z") == 3
    assert len(vocab) == 4 and "z" in vocab and "w" not in vocab
    again = Vocabulary.from_dict(vocab.to_dict())
    assert again == vocab and again.word2idx == vocab.word2idx
    assert again.index("w") == 1
    with pytest.raises(ValueError):
        Vocabulary.from_dict({"idx2word": ["a", "a"]})


# ---------------------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------------------


def test_batchify_shape_and_column_major_order() -> None:
    data = torch.arange(13)
    out = batchify(data, 3)
    assert out.shape == (4, 3) and out.is_contiguous()
    # Column b is the contiguous stream data[4b:4b+4]; the 13th token is dropped.
    assert out[:, 0].tolist() == [0, 1, 2, 3]
    assert out[:, 1].tolist() == [4, 5, 6, 7]
    assert out[0].tolist() == [0, 4, 8]


def test_batchify_too_few_tokens() -> None:
    with pytest.raises(DataError, match="too short"):
        batchify(torch.arange(5), 3)


def test_get_batch_shift_and_last_window() -> None:
    source = batchify(torch.arange(40), 4)  # [10, 4]
    inp, tgt = get_batch(source, 0, 3)
    assert inp.shape == tgt.shape == (3, 4)
    assert torch.equal(tgt[:-1], inp[1:])
    assert torch.equal(tgt, source[1:4])
    inp, tgt = get_batch(source, 7, 5)  # only rows 7,8 can be inputs (row 9 is the last target)
    assert inp.shape == tgt.shape == (2, 4)
    assert torch.equal(tgt[-1], source[-1])
    with pytest.raises(ValueError):
        get_batch(source, 9, 3)


def test_sample_seq_len_deterministic_and_bounded() -> None:
    def draws(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return [sample_seq_len(35, gen) for _ in range(2000)]

    first, second = draws(0), draws(0)
    assert first == second
    assert first != draws(1)
    assert min(first) >= 5 and max(first) <= 35 + 20
    # Roughly 95% of draws centre on bptt, the rest on bptt/2.
    near_full = sum(abs(x - 35) <= 15 for x in first) / len(first)
    assert 0.9 < near_full < 0.99
    # The global RNG is untouched.
    torch.manual_seed(123)
    before = torch.get_rng_state()
    sample_seq_len(35, torch.Generator().manual_seed(0))
    assert torch.equal(before, torch.get_rng_state())


def test_sample_seq_len_cap_and_floor() -> None:
    gen = torch.Generator().manual_seed(0)
    assert all(sample_seq_len(10, gen, std=100.0, max_extra=2) <= 12 for _ in range(200))
    assert all(sample_seq_len(10, gen, std=100.0, min_len=7) >= 7 for _ in range(200))


@pytest.mark.parametrize("variable", [False, True])
def test_bptt_windows_cover_all_positions(variable: bool) -> None:
    source = batchify(torch.arange(1003), 5)  # [200, 5]
    gen = torch.Generator().manual_seed(3) if variable else None
    windows = list(bptt_windows(source, 35, variable=variable, generator=gen))
    covered: list[int] = []
    for i, seq_len in windows:
        inp, _ = get_batch(source, i, seq_len)
        assert inp.size(0) == seq_len
        covered.extend(range(i, i + seq_len))
    assert covered == list(range(source.size(0) - 1))
    if not variable:
        assert [s for _, s in windows] == [35] * 5 + [199 - 175]


def test_bptt_windows_resume_from_start() -> None:
    source = batchify(torch.arange(2000), 4)  # [500, 4]
    gen = torch.Generator().manual_seed(7)
    full = list(bptt_windows(source, 35, variable=True, generator=gen))
    # Replay: consume 3 windows, snapshot (next start, generator state), resume with a fresh generator.
    gen = torch.Generator().manual_seed(7)
    it = bptt_windows(source, 35, variable=True, generator=gen)
    head = [next(it) for _ in range(3)]
    start = head[-1][0] + head[-1][1]
    resumed_gen = torch.Generator()
    resumed_gen.set_state(gen.get_state())
    tail = list(bptt_windows(source, 35, variable=True, generator=resumed_gen, start=start))
    assert head + tail == full
    # Fixed windows from an arbitrary start.
    assert next(bptt_windows(source, 35, start=100)) == (100, 35)
    assert list(bptt_windows(source, 35, start=499)) == []


def test_bptt_windows_variable_needs_generator() -> None:
    with pytest.raises(ValueError):
        next(bptt_windows(torch.zeros(10, 2), 5, variable=True))


# ---------------------------------------------------------------------------------------------------------------
# Root resolution
# ---------------------------------------------------------------------------------------------------------------


def test_resolve_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENAS_RNN_DATA", str(tmp_path / "env"))
    # 1. explicit root wins over the environment.
    assert resolve_root(str(tmp_path / "explicit")) == tmp_path / "explicit"
    assert resolve_root("~/somewhere") == Path.home() / "somewhere"
    # 2. environment variable, with the corpus name appended.
    assert resolve_root(None) == tmp_path / "env" / "ptb"
    assert resolve_root("", name="wikitext-2") == tmp_path / "env" / "wikitext-2"
    # 3. ./data/<name>, relative to base if given, else the current directory.
    monkeypatch.delenv("ENAS_RNN_DATA")
    assert resolve_root(None, base=tmp_path) == tmp_path / "data" / "ptb"
    monkeypatch.chdir(tmp_path)
    assert resolve_root(None, name="wikitext-2") == tmp_path / "data" / "wikitext-2"
    # A relative root is anchored at base (Hydra changes cwd; base is the launch dir).
    assert resolve_root("mydata", base=tmp_path / "launch") == tmp_path / "launch" / "mydata"
