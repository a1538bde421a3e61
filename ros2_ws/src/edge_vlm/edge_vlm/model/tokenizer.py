"""Word-level tokenizer for the simulator's caption language (vocabulary stored in the
checkpoint)."""
from __future__ import annotations

import re

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = [PAD, BOS, EOS, UNK]


def words(text: str) -> list[str]:
    """Lowercase words and digits; punctuation is dropped."""
    return re.findall(r"[a-z0-9']+", text.lower())


class Tokenizer:
    def __init__(self, vocab: list[str]):
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.pad, self.bos, self.eos, self.unk = (self.index[s] for s in SPECIALS)

    @classmethod
    def build(cls, texts) -> "Tokenizer":
        seen = sorted({w for t in texts for w in words(t)})
        return cls(SPECIALS + seen)

    def encode(self, text: str, max_len: int) -> list[int]:
        """``[bos, w1, ..., eos]`` padded with pad to ``max_len + 1``."""
        body = [self.index.get(w, self.unk) for w in words(text)][: max_len - 1]
        ids = [self.bos] + body + [self.eos]
        return ids + [self.pad] * (max_len + 1 - len(ids))

    def decode(self, ids) -> str:
        return " ".join(self.vocab[i] for i in ids if i not in (self.pad, self.bos, self.eos))
