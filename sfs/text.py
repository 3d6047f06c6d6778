"""Text in: a word-level tokenizer and a small transformer text encoder, trained from scratch.

Book ch. 11, sec. "Tokens and embeddings". Stable Diffusion reads prompts with CLIP's byte-pair
encoding, which splits any string into sub-word pieces from a 49,408-entry vocabulary learned on
the web; our captions come from a small grammar (``sfs.canvas``), so a vocabulary of its words is
enough, and a word outside it is an error (or ``<unk>``, if asked) instead of a silent guess:

    "a red 3 left of a blue 7" -> [<bos>, a, red, 3, left, of, a, blue, 7, <eos>, <pad>, ...]

The encoder embeds tokens, adds learned position embeddings (Book eq. (11.1)) and runs pre-norm
transformer blocks (Book eq. (11.2); Vaswani et al. 2017) whose self-attention skips the padding;
it returns per-token states (B, L, D) and the padding mask (B, L), which the U-Net's
cross-attention reads. The empty prompt "" is [<bos>, <eos>]: the "no prompt" of classifier-free
guidance (Book eq. (11.5)).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
from sfs.unet import attention

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = range(4)


def canvas_vocabulary() -> tuple[str, ...]:
    """Every word the caption grammar of ``sfs.canvas`` can write, after the special tokens."""
    from sfs import canvas
    words: set[str] = {"a", "an", "two", "of", "pair", "pairs", "trousers"}
    phrases = [*canvas.COLOURS, *canvas.DIGIT_WORDS, *(str(d) for d in range(10))]
    for singular, plural in canvas.NOUNS.values():
        phrases += [*singular, plural]
    for table in (canvas.SIZE_WORDS, canvas.RELATION_WORDS, canvas.REGION_WORDS):
        for options in table.values():
            phrases += options
    for p in phrases:
        words.update(p.split())
    return SPECIALS + tuple(sorted(words))


def split_words(prompt: str) -> list[str]:
    """Lower-case words of a prompt; punctuation is dropped ("A red 3, please." -> a red 3 please)."""
    return re.findall(r"[a-z0-9'-]+", prompt.lower())


class Tokenizer:
    """Words -> integer ids, padded to ``max_length`` with <bos> first and <eos> after the words.

    unknown: "error" (default) raises ValueError naming the unknown words; "unk" maps them to <unk>.
    """

    def __init__(self, vocab: tuple[str, ...] | None = None, max_length: int = 20,
                 unknown: str = "error"):
        self.vocab = tuple(vocab) if vocab is not None else canvas_vocabulary()
        if self.vocab[:4] != SPECIALS:
            raise ValueError(f"vocab must start with the special tokens {SPECIALS}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
            raise ValueError(f"max_length must be an int >= 3 (<bos>, a word, <eos>), got {max_length!r}")
        if unknown not in ("error", "unk"):
            raise ValueError(f"unknown must be 'error' or 'unk', got {unknown!r}")
        self.max_length, self.unknown = max_length, unknown
        self.index = {w: i for i, w in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, prompts: str | list[str]) -> torch.Tensor:
        """prompts (B strings, or one) -> ids (B, max_length) int64."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
        ids = torch.full((len(prompts), self.max_length), PAD, dtype=torch.long)
        for b, prompt in enumerate(prompts):
            words = split_words(prompt)
            unknown = [w for w in words if w not in self.index]
            if unknown and self.unknown == "error":
                raise ValueError(f"prompt {prompt!r} has words the model does not know: {unknown}. "
                                 f"Known words: {' '.join(self.vocab[4:])}")
            if len(words) > self.max_length - 2:
                raise ValueError(f"prompt {prompt!r} has {len(words)} words; at most "
                                 f"max_length - 2 = {self.max_length - 2} fit")
            row = [BOS] + [self.index.get(w, UNK) for w in words] + [EOS]
            ids[b, :len(row)] = torch.tensor(row)
        return ids

    def decode(self, ids: torch.Tensor) -> list[str]:
        """ids (B, L) -> B strings, without special tokens."""
        return [" ".join(self.vocab[i] for i in row.tolist() if i >= len(SPECIALS) or i == UNK)
                for row in ids]


class TextContext(NamedTuple):
    """What the text encoder hands the U-Net: states (B, L, D) and mask (B, L) bool, True = a token."""

    states: torch.Tensor
    mask: torch.Tensor


@dataclass
class TextEncoderConfig:
    """The text encoder. Defaults: 2 blocks of width 64 over at most 20 tokens."""

    vocab_size: int = 64  # set from the tokenizer
    max_length: int = 20  # tokens per prompt, <bos> and <eos> included (captions have <= 16 words)
    dim: int = 64  # D: width of every token state
    num_layers: int = 2
    num_heads: int = 4

    def __post_init__(self):
        for name in ("vocab_size", "max_length", "dim", "num_layers", "num_heads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")

    def to_dict(self) -> dict:
        """JSON-able dict."""
        return asdict(self)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + MHA(LN(x), mask), then x + MLP(LN(x)). (B, L, D) -> (B, L, D).

    Book eq. (11.2); Vaswani et al. 2017 (pre-norm as in GPT-2); the attention of book ch. 5,
    sec. "Self-attention", over tokens, with the padded keys masked as in Book eq. (11.4).
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, L, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, head_dim)
        out = attention(q, k, v, mask[:, None, None, :])  # keys: tokens only
        x = x + self.proj(out.transpose(1, 2).reshape(B, L, D))
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """ids (B, L) int64 -> TextContext(states (B, L, D), mask (B, L)): token and position embeddings, blocks, a final LayerNorm.

    Book ch. 11, sec. "The text encoder": Book eqs. (11.1)-(11.2).
    """

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = c = config
        self.token_embed = nn.Embedding(c.vocab_size, c.dim)
        self.pos_embed = nn.Parameter(torch.randn(c.max_length, c.dim) * 0.02)
        self.blocks = nn.ModuleList([TransformerBlock(c.dim, c.num_heads) for _ in range(c.num_layers)])
        self.norm = nn.LayerNorm(c.dim)

    def check_ids(self, ids: torch.Tensor, batch: int | None = None) -> None:
        """Raise unless ids is an int64 (B, max_length) tensor of ids in [0, vocab_size)."""
        c = self.config
        if not torch.is_tensor(ids) or ids.dtype != torch.long:
            raise TypeError(f"the prompt ids must be an int64 tensor (B, {c.max_length}) from "
                            f"Tokenizer.encode, got {ids.dtype if torch.is_tensor(ids) else type(ids).__name__}")
        if ids.ndim != 2 or ids.shape[1] != c.max_length or (batch is not None and ids.shape[0] != batch):
            want = f"({batch if batch is not None else 'B'}, {c.max_length})"
            raise ValueError(f"the prompt ids must have shape {want}, got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= c.vocab_size):
            raise ValueError(f"the prompt ids must lie in [0, vocab_size) = [0, {c.vocab_size})")

    def forward(self, ids: torch.Tensor) -> TextContext:
        self.check_ids(ids)
        mask = ids != PAD  # (B, L); <bos> is never padding, so every row attends somewhere
        x = self.token_embed(ids) + self.pos_embed[: ids.shape[1]]  # (B, L, D)
        for block in self.blocks:
            x = block(x, mask)
        return TextContext(self.norm(x), mask)
