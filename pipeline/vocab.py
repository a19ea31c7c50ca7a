"""Word vocabularies: the K most frequent words of a side plus the model's special symbols.

File format: ``<name>.txt``, one token a line, the line index being the id; the special
symbols come first (``<pad>`` = 0, ``<unk>`` = 1, ``</s>`` = 2), then words by frequency,
ties broken by byte order. ``<name>.json`` beside it holds the metadata (language, size,
counts, coverage).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

PAD, UNK, EOS = "<pad>", "<unk>", "</s>"
SPECIALS: tuple[str, ...] = (PAD, UNK, EOS)
PAD_ID, UNK_ID, EOS_ID = 0, 1, 2


class Vocabulary:
    """Token <-> id mapping with the special symbols at fixed ids."""

    def __init__(self, words: Iterable[str], lang: str = "", meta: dict[str, Any] | None = None):
        tokens = list(SPECIALS)
        for word in words:
            if word in SPECIALS:
                continue
            tokens.append(word)
        self.itos: list[str] = tokens
        self.stoi: dict[str, int] = {token: i for i, token in enumerate(tokens)}
        if len(self.stoi) != len(self.itos):
            raise UserError(f"vocabulary for '{lang}' lists a word twice")
        self.lang = lang
        self.meta: dict[str, Any] = dict(meta or {})

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    def encode(self, tokens: Sequence[str], add_eos: bool = False) -> list[int]:
        ids = [self.stoi.get(token, UNK_ID) for token in tokens]
        if add_eos:
            ids.append(EOS_ID)
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def count_unknown(self, tokens: Sequence[str]) -> int:
        return sum(token not in self.stoi for token in tokens)

    def to_dict(self) -> dict[str, Any]:
        return {"lang": self.lang, "itos": self.itos, "meta": self.meta}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Vocabulary:
        return cls(payload["itos"][len(SPECIALS):], lang=payload.get("lang", ""), meta=payload.get("meta"))

    def save(self, path: str | Path) -> None:
        """Write ``path`` (one token a line) and ``path`` with suffix .json (metadata)."""
        path = Path(path)
        path.write_text("".join(f"{token}\n" for token in self.itos), encoding="utf-8")
        meta = {"lang": self.lang, "size": len(self), "specials": list(SPECIALS)} | self.meta
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: vocabulary file not found")
        lines = path.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if tuple(lines[: len(SPECIALS)]) != SPECIALS:
            raise UserError(f"{path}:1: not an rnnenc vocabulary (expected {', '.join(SPECIALS)} first)")
        meta_path = path.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        return cls(lines[len(SPECIALS):], lang=meta.get("lang", ""), meta=meta)
