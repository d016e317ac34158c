"""Built-in backbone families; importing this package registers each of them."""

from retune.backbones.families import default  # noqa: F401
