"""Captioning (CoCa, Yu et al. 2022): a small autoregressive decoder over the adaptor's image tokens generates the
paired text, trained with teacher forcing.

Words come from a word-level vocabulary built from the training images' texts (words seen at least ``min_count``
times; the rest are ``<unk>``, which is never generated), not from the text tower's 30,522-entry MiniLM word-piece
vocabulary: the synthetic label sentences use a few dozen words, a softmax over 30k entries would dominate the cost
of every step on a CPU, and backbones without a tokenizer work the same way. The vocabulary is saved with the run
(words only, no text).
"""

from __future__ import annotations

import re
from collections import Counter

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from retune.methods.xattn_adaptor import CrossAttentionAdaptor
from retune.objectives.base import Objective, ObjectiveContext, ObjectiveOptions, PairBatch, register_objective

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
VOCABULARY_KIND = "word-level, from the training texts"
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    """Lower-case words and punctuation marks of ``text``."""
    return _WORD.findall(text.lower())


class Vocabulary:
    """Word <-> id; ids 0-3 are padding, begin, end and unknown."""

    def __init__(self, entries: list[str]) -> None:
        self.entries = list(entries)
        self.ids = {word: index for index, word in enumerate(self.entries)}

    @classmethod
    def from_texts(cls, texts: list[str], min_count: int) -> Vocabulary:
        counts = Counter(word for text in texts for word in words(text))
        return cls([*SPECIALS, *sorted(word for word, count in counts.items() if count >= min_count)])

    def __len__(self) -> int:
        return len(self.entries)

    def encode(self, text: str, max_words: int) -> list[int]:
        """``<bos>`` + the first ``max_words`` word ids + ``<eos>``, padded to ``max_words + 2``."""
        ids = [self.ids.get(word, self.ids[UNK]) for word in words(text)[:max_words]]
        row = [self.ids[BOS], *ids, self.ids[EOS]]
        return row + [self.ids[PAD]] * (max_words + 2 - len(row))

    def decode(self, ids: list[int]) -> str:
        """The words up to ``<eos>``, spaces before punctuation removed."""
        out: list[str] = []
        for index in ids:
            word = self.entries[index]
            if word == EOS:
                break
            if word not in (PAD, BOS):
                out.append(word)
        return re.sub(r" ([^\sa-z0-9<])", r"\1", " ".join(out))


class CaptionOptions(ObjectiveOptions):
    layers: int = Field(1, ge=1, description="Decoder layers (self-attention, cross-attention to image tokens, MLP).")
    max_words: int = Field(32, ge=1, description="Words kept per text (longer texts are cut).")
    min_count: int = Field(2, ge=1, description="Words rarer than this in the training texts become <unk>.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


@register_objective("caption")
class CaptionObjective(Objective):
    """Cross-entropy of the next word given the previous ones and the adaptor's image token states."""

    Options = CaptionOptions

    def __init__(self, options: CaptionOptions, context: ObjectiveContext) -> None:
        super().__init__(options, context)
        saved = context.saved_facts
        self.vocabulary = (
            Vocabulary(saved["vocabulary"]) if saved else Vocabulary.from_texts(context.train_texts, options.min_count)
        )
        # word ids of the training texts: rebuilt from the texts each run, never saved (non-persistent)
        targets = [self.vocabulary.encode(text, options.max_words) for text in context.texts]
        self.register_buffer("targets", torch.tensor(targets, dtype=torch.long).reshape(-1, options.max_words + 2),
                             persistent=False)
        width = context.width
        self.embed = nn.Embedding(len(self.vocabulary), width, padding_idx=0)
        self.position = nn.Parameter(torch.randn(options.max_words + 2, width) * 0.02)
        layer = nn.TransformerDecoderLayer(
            width, context.heads, 4 * width, options.dropout, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, options.layers)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, len(self.vocabulary))

    def logits(self, image_states: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Next-word logits (B x L x V) for word-id prefixes ``inputs`` (B x L)."""
        length = inputs.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=inputs.device).triu(1)  # True = not attended
        x = self.embed(inputs) + self.position[:length]
        x = self.decoder(x, image_states, tgt_mask=causal, tgt_is_causal=True, tgt_key_padding_mask=inputs == 0)
        return self.out(self.norm(x))

    def forward(self, batch: PairBatch) -> torch.Tensor:
        ids = self.targets[batch.text_index]
        ids = ids[:, : int((ids != 0).sum(1).max())]  # trim padding beyond the longest text of the batch
        logits = self.logits(batch.full.image_states, ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), ignore_index=0)

    @torch.no_grad()
    def generate(self, adaptor: CrossAttentionAdaptor, image_tokens: torch.Tensor) -> list[str]:
        """Greedy captions (one per image) from cached image tokens (N x T x D)."""
        self.eval()
        adaptor.eval()
        states = adaptor.image_tower(image_tokens, None)[0]
        ids = torch.full((len(states), 1), self.vocabulary.ids[BOS], dtype=torch.long, device=states.device)
        for _ in range(self.options.max_words + 1):
            following = self.logits(states, ids)[:, -1]
            following[:, [self.vocabulary.ids[word] for word in (PAD, BOS, UNK)]] = -torch.inf
            ids = torch.cat([ids, following.argmax(dim=1, keepdim=True)], dim=1)
            if (ids == self.vocabulary.ids[EOS]).any(dim=1).all():
                break
        return [self.vocabulary.decode(row) for row in ids[:, 1:].tolist()]

    def facts(self) -> dict:
        return {**super().facts(), "vocabulary": self.vocabulary.entries, "vocabulary_kind": VOCABULARY_KIND}
