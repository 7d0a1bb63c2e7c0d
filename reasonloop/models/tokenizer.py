"""The tiny backend's character tokenizer: a fixed vocabulary, so every checkpoint stays compatible.

Ids: 0 = pad, 1 = bos, 2 = eos, 3 = newline, 4..98 = printable ASCII 32..126; the rest up to 128
are unused (a round number keeps the embedding and output matrices aligned).
"""

from __future__ import annotations

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
NEWLINE_ID = 3
CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
"""The characters in id order, starting at `NEWLINE_ID`."""
VOCAB_SIZE = 128
FIRST_DIGIT_ID = NEWLINE_ID + CHARS.index("0")
"""Ids FIRST_DIGIT_ID .. FIRST_DIGIT_ID + 9 are the digits 0..9."""
N_USED = NEWLINE_ID + len(CHARS)
"""Ids 0..N_USED-1 are in use; N_USED..VOCAB_SIZE-1 are padding that is never sampled."""


class CharTokenizer:
    """Newline and printable ASCII, one id per character (implements `models.base.Tokenizer`)."""

    vocab_size: int = VOCAB_SIZE
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID
    newline_id: int = NEWLINE_ID

    def __init__(self) -> None:
        self._ids = {ch: NEWLINE_ID + i for i, ch in enumerate(CHARS)}
        self._chars = [""] * VOCAB_SIZE
        for ch, i in self._ids.items():
            self._chars[i] = ch

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without bos/eos. Raises ValueError on a character outside the vocabulary."""
        ids = self._ids
        try:
            return [ids[ch] for ch in text]
        except KeyError:
            pos, ch = next((i, c) for i, c in enumerate(text) if c not in ids)
            raise ValueError(
                f"character {ch!r} (U+{ord(ch):04X}) at position {pos} of {text[:40]!r} is not in "
                "the tiny tokenizer's vocabulary (newline and printable ASCII 32..126)"
            ) from None

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`; pad/bos/eos and unused ids are skipped. Ids outside 0..127 raise ValueError."""
        chars = self._chars
        out = []
        for i in ids:
            if not 0 <= i < VOCAB_SIZE:
                raise ValueError(f"token id {i} is outside the tiny vocabulary 0..{VOCAB_SIZE - 1}")
            out.append(chars[i])
        return "".join(out)


def hf_tokenizer():
    """The same tokenizer as a `transformers.PreTrainedTokenizerFast` (ids identical), so that an
    exported tiny model loads with `AutoTokenizer` and runs in TRL or vLLM unchanged.

    One id per character (a `tokenizers` WordLevel model over single characters); bos, eos and
    pad are the special tokens `<s>`, `</s>`, `<pad>`. The unused ids N_USED..127 are left out,
    so `len(tokenizer)` is N_USED and the hf backend never samples them. Needs `transformers`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD_ID, "<s>": BOS_ID, "</s>": EOS_ID}
    vocab |= {ch: NEWLINE_ID + i for i, ch in enumerate(CHARS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="left",
        model_max_length=1 << 30,
    )
