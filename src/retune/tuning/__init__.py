"""Encoder tuning (PEFT-style) under the RE-tune head: towers, adapters, the frozen-block split and the tuned model."""
