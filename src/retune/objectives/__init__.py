"""Pre-training objectives for the cross-attention Adaptor on cached tokens (towers frozen), one file each.

``clip`` (InfoNCE), ``siglip`` (sigmoid), ``masked`` (FLIP: tokens dropped), ``unimodal`` (SLIP/SimCSE contrast and
masked text-token prediction), ``caption`` (CoCa decoder) and ``filip`` (token-wise late interaction), combined
with weights by :class:`ObjectiveMix` from a YAML mix such as ``{clip: 1.0, caption: 0.5, masked: {ratio: 0.5}}``.
"""

from retune.objectives import caption, clip, filip, masked, siglip, unimodal  # noqa: F401  (register objectives)
from retune.objectives.base import OBJECTIVES, Objective, ObjectiveContext, PairBatch, register_objective
from retune.objectives.config import ObjectivesBenchConfig, parse_mix
from retune.objectives.mix import ObjectiveMix, TokenPairs, pretrain_mix

__all__ = [
    "OBJECTIVES",
    "Objective",
    "ObjectiveContext",
    "ObjectiveMix",
    "ObjectivesBenchConfig",
    "PairBatch",
    "TokenPairs",
    "parse_mix",
    "pretrain_mix",
    "register_objective",
]
