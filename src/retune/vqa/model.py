"""The VQA model: image and question tokens through the cross-attention Adaptor's towers and fusion blocks, then an
answer head that scores each candidate answer by similarity to its embedding (yes/no, multiple choice and answer
vocabularies alike)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retune.methods.xattn_adaptor import CrossAttentionAdaptor
from retune.vqa.tokens import ImageTokens, TextTokens

INITIAL_SCALE = math.log(10.0)


class AnswerHead(nn.Module):
    """Fusion of image and question tokens (the Adaptor's, ``CrossAttentionAdaptor.fused_features``) projected into
    the space of candidate-answer embeddings (the Adaptor's text tower on the answer's tokens)."""

    def __init__(self, image_dim: int, text_dim: int, width: int = 64, layers: int = 1, heads: int = 4,
                 fusion_layers: int = 1, dropout: float = 0.1, embed_dim: int | None = None) -> None:
        """``embed_dim``: width of the answer embeddings (default ``width``); a pre-trained Adaptor's towers load into
        ``fusion`` when its widths match (``retune adaptor bench``'s VQA task)."""
        super().__init__()
        embed_dim = embed_dim or width
        self.fusion = CrossAttentionAdaptor(image_dim, text_dim, width, embed_dim, layers, heads,
                                            max(fusion_layers, 1), dropout)
        self.query = nn.Linear(2 * width, embed_dim)
        self.log_scale = nn.Parameter(torch.tensor(INITIAL_SCALE))

    def forward(self, image_tokens: torch.Tensor, question_tokens: torch.Tensor, question_mask: torch.Tensor,
                answer_tokens: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
        """Similarity logits (questions x answers); image and question rows go together."""
        padding = ~question_mask
        image_states = self.fusion.image_tower(image_tokens, None)[0]
        question_states = self.fusion.text_tower(question_tokens, padding)[0]
        fused = self.fusion.fused_features(image_states, question_states, padding)
        query = F.normalize(self.query(fused), dim=-1)
        answers = self.fusion.encode_text(answer_tokens, answer_mask)
        return self.log_scale.exp().clamp(max=100.0) * query @ answers.T


@dataclass
class QuestionBatch:
    """Questions as indices: image row, question text id, candidate text ids (-1 = padding) and the answer's
    position among the candidates."""

    image: torch.Tensor  # Q
    question: torch.Tensor  # Q
    candidates: torch.Tensor  # Q x C
    target: torch.Tensor  # Q

    def subset(self, rows: torch.Tensor) -> QuestionBatch:
        return QuestionBatch(self.image[rows], self.question[rows], self.candidates[rows], self.target[rows])

    def __len__(self) -> int:
        return len(self.image)


class VqaNetwork(nn.Module):
    """Answer head on token sources; ``state_dict`` holds the head and the tuned encoders' trainable tensors only."""

    def __init__(self, head: AnswerHead, images: ImageTokens, texts: TextTokens,
                 encoder_parameters: dict[str, nn.Parameter]) -> None:
        super().__init__()
        self.head = head
        self.encoder = nn.ParameterDict({name.replace(".", "__"): p for name, p in encoder_parameters.items()})
        self.images, self.texts = images, texts

    def logits(self, batch: QuestionBatch) -> torch.Tensor:
        """Logit per (question, candidate) (Q x C), -inf at padding; each image and text is encoded once."""
        device = next(self.head.parameters()).device
        images, image_of = batch.image.unique(return_inverse=True)
        image_tokens = self.images(images).to(device)[image_of.to(device)]
        answer_ids = batch.candidates[batch.candidates >= 0].unique()
        text_ids = torch.cat([batch.question, answer_ids]).unique()
        tokens, mask = self.texts(text_ids)
        tokens, mask = tokens.to(device), mask.to(device)
        question_rows = torch.searchsorted(text_ids, batch.question).to(device)
        answer_rows = torch.searchsorted(text_ids, answer_ids).to(device)
        similarity = self.head(image_tokens, tokens[question_rows], mask[question_rows], tokens[answer_rows],
                               mask[answer_rows])
        positions = torch.searchsorted(answer_ids, batch.candidates.clamp(min=0)).to(device)
        return similarity.gather(1, positions).masked_fill((batch.candidates < 0).to(device), -math.inf)

    def loss(self, batch: QuestionBatch) -> torch.Tensor:
        logits = self.logits(batch)
        return F.cross_entropy(logits, batch.target.to(logits.device))

    @torch.no_grad()
    def probabilities(self, batch: QuestionBatch, chunk: int | None = None) -> np.ndarray:
        """Softmax over each question's candidates (Q x C, 0 at padding), ``chunk`` questions at a time (default: 256
        on cached tokens, 16 when each image runs through the tuned image tower, whose activations are large)."""
        self.eval()
        chunk = chunk or (16 if self.images.tuned else 256)
        parts = [torch.softmax(self.logits(batch.subset(torch.arange(s, min(s + chunk, len(batch))))), dim=1)
                 for s in range(0, len(batch), chunk)]
        return torch.cat(parts).float().cpu().numpy() if parts else np.zeros((0, batch.candidates.shape[1]))
