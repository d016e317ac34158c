"""Closed-ended visual question answering over the towers: question and image tokens, the Adaptor's cross-attention
fusion, an answer head scoring candidate answers; towers frozen or tuned through ``retune.tuning``."""

from retune.vqa.model import AnswerHead, QuestionBatch, VqaNetwork
from retune.vqa.tokens import ImageTokens, TextTokens

__all__ = ["AnswerHead", "ImageTokens", "QuestionBatch", "TextTokens", "VqaNetwork"]
