"""Text data for growth runs: files or folders -> token stream -> fixed windows, with a held-out split.

The tokenizer comes from the checkpoint folder when it has tokenizer files (so a published model keeps its
own vocabulary), otherwise text is read as UTF-8 bytes (ids 0..255, id 256 is the mask token for MLM).
Validation holds out whole files (every k-th in sorted order) when there are several, else the tail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from genai_train.run import path_field
from growth.hf import TOKENIZER_FILES

__all__ = [
    "DataConfig",
    "ByteTokenizer",
    "TextData",
    "load_tokenizer",
    "list_text_files",
    "mlm_mask",
    "byte_tokenizer_fast",
]


@dataclass
class DataConfig:
    """Where the text is and how it is cut into training windows."""

    root: str = path_field("", "a text file or a folder of text files")
    extensions: tuple[str, ...] = field(
        default=(".txt", ".md", ".rst", ".py"), metadata={"help": "file suffixes read from a folder"}
    )
    exclude: tuple[str, ...] = field(
        default=("__pycache__", "site-packages", ".git"),
        metadata={"help": "folder names skipped while walking a folder"},
    )
    max_mb: float = field(default=0.0, metadata={"help": "read at most this many MB of text (0: all)"})
    tokenizer: Literal["auto", "bytes"] = field(
        default="auto", metadata={"help": "auto: the checkpoint folder's tokenizer when present, else bytes"}
    )
    seq_len: int = field(default=128, metadata={"help": "tokens per training window"})
    batch_size: int = field(default=16, metadata={"help": "windows per micro-batch per process"})
    val_fraction: float = field(default=0.05, metadata={"help": "share of files (or tokens) held out"})
    val_batches: int = field(default=8, metadata={"help": "validation batches per evaluation"})
    mask_prob: float = field(default=0.15, metadata={"help": "MLM: share of tokens masked (BERT recipe 80/10/10)"})

    def __post_init__(self) -> None:
        if self.seq_len < 2:
            raise ValueError(f"data.seq_len={self.seq_len} must be >= 2")
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size={self.batch_size} must be >= 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={self.val_fraction} must be in (0, 1)")
        if self.max_mb < 0:
            raise ValueError(f"data.max_mb={self.max_mb} must be >= 0")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"data.mask_prob={self.mask_prob} must be in (0, 1)")


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255; id 256 is reserved (mask token for MLM, separator between files)."""

    vocab_size = 257
    mask_token_id = 256
    sep_id = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8", errors="replace"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")


def byte_tokenizer_fast(arch: str = "gpt2"):
    """The :class:`ByteTokenizer` as a ``transformers`` fast tokenizer, for grown folders of byte-level models.

    A byte-level BPE without merges: byte b is id b (GPT-2's byte-to-unicode alphabet), id 256 is the special
    token (``<|endoftext|>`` = bos/eos of decoders, ``[MASK]`` of encoders). ``AutoTokenizer`` loads it from the
    folder and ``decode(encode(text)) == text`` for any UTF-8 text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_char = _bytes_to_unicode()
    assert set(byte_char.values()) == set(alphabet)
    vocab = {byte_char[b]: b for b in range(256)}
    special = "[MASK]" if arch == "bert" else "<|endoftext|>"
    vocab[special] = ByteTokenizer.sep_id
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([special])
    if arch == "bert":
        return PreTrainedTokenizerFast(tokenizer_object=tok, mask_token=special)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=special, eos_token=special)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def load_tokenizer(checkpoint: str | Path | None, kind: str = "auto"):
    """The checkpoint folder's HF tokenizer when it has tokenizer files and ``kind`` is auto, else bytes."""
    if kind == "auto" and checkpoint and any((Path(checkpoint) / f).exists() for f in TOKENIZER_FILES):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(checkpoint))
    return ByteTokenizer()


def _vocab_size(tok) -> int:
    return tok.vocab_size if isinstance(tok, ByteTokenizer) else len(tok)


def list_text_files(cfg: DataConfig) -> list[Path]:
    root = Path(cfg.root)
    if not cfg.root:
        raise ValueError("no text data given; pass --data with a text file or a folder of text files")
    if not root.exists():
        raise ValueError(f"text data {root} does not exist; pass --data with a text file or folder")
    if root.is_file():
        return [root]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in cfg.exclude and not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(tuple(cfg.extensions)))
    return files


class TextData:
    """Tokenized train/validation streams cut into windows of ``seq_len + 1`` tokens."""

    def __init__(self, cfg: DataConfig, tokenizer):
        self.cfg, self.tok = cfg, tokenizer
        files = list_text_files(cfg)
        texts: list[tuple[Path, str]] = []
        budget = cfg.max_mb * 1e6 if cfg.max_mb else float("inf")
        used = 0
        for f in files:
            if used >= budget:
                break
            try:
                t = f.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            if t.strip():
                texts.append((f, t))
                used += len(t)
        if not texts:
            raise ValueError(
                f"text data {cfg.root} is empty: no non-empty files with suffixes "
                f"{', '.join(cfg.extensions)}; pass --data with text files (or set data.extensions)"
            )
        sep = getattr(tokenizer, "sep_id", None)
        if sep is None:
            sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        self.vocab_size = _vocab_size(tokenizer)
        k = max(2, round(1 / cfg.val_fraction))
        if len(texts) >= k:
            val_files = {i for i in range(len(texts)) if i % k == k - 1}
        else:
            val_files = set()
        train_ids, val_ids = [], []
        for i, (_, t) in enumerate(texts):
            ids = self._encode(t)
            (val_ids if i in val_files else train_ids).append(np.append(ids, sep if sep is not None else []))
        train = np.concatenate(train_ids).astype(np.int64)
        if val_ids:
            val = np.concatenate(val_ids).astype(np.int64)
        else:  # one file: hold out its tail
            cut = int(len(train) * (1 - cfg.val_fraction))
            train, val = train[:cut], train[cut:]
        W = cfg.seq_len + 1
        if len(train) < W * 2 or len(val) < W:
            raise ValueError(
                f"text data {cfg.root} is too small: {len(train)} training and {len(val)} validation "
                f"tokens for windows of {W}; add text or lower data.seq_len"
            )
        self.train = torch.from_numpy(train)
        self.val = torch.from_numpy(val)
        self.n_train_windows = (len(train) - 1) // cfg.seq_len
        self.n_val_windows = (len(val) - 1) // cfg.seq_len
        self.mask_token_id = getattr(tokenizer, "mask_token_id", None)
        self.files = [str(f) for f, _ in texts]

    def _encode(self, text: str) -> np.ndarray:
        if isinstance(self.tok, ByteTokenizer):
            return self.tok.encode(text)
        return np.asarray(self.tok(text, add_special_tokens=False)["input_ids"], dtype=np.int64)

    def windows(self, idx: torch.Tensor, split: str = "train") -> torch.Tensor:
        """Windows ``idx`` of the split -> ids [B, seq_len + 1]."""
        stream = self.train if split == "train" else self.val
        T = self.cfg.seq_len
        starts = idx * T
        return torch.stack([stream[s : s + T + 1] for s in starts.tolist()])

    def val_batches(self) -> list[torch.Tensor]:
        """Fixed validation batches (the first windows of the held-out stream)."""
        n = min(self.n_val_windows, self.cfg.val_batches * self.cfg.batch_size)
        idx = torch.arange(n)
        return [self.windows(idx[i : i + self.cfg.batch_size], "val") for i in range(0, n, self.cfg.batch_size)]


def mlm_mask(
    ids: torch.Tensor, mask_id: int, vocab_size: int, prob: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose ``prob`` of positions; 80% -> [MASK], 10% -> random token, 10% kept.

    Returns (inputs [B, T], labels [B, T] with -100 where no loss is taken).
    """
    chosen = torch.rand(ids.shape, generator=generator) < prob
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    r = torch.rand(ids.shape, generator=generator)
    rand_tok = torch.randint(0, vocab_size, ids.shape, generator=generator)
    inputs = torch.where(chosen & (r < 0.8), torch.full_like(ids, mask_id), ids)
    inputs = torch.where(chosen & (r >= 0.8) & (r < 0.9), rand_tok, inputs)
    return inputs, labels
