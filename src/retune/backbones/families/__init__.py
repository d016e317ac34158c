"""Built-in backbone families; importing this package registers each of them."""

from retune.backbones.families import (
    biovil_family,  # noqa: F401
    default,  # noqa: F401
    hf_family,  # noqa: F401
    open_clip_family,  # noqa: F401
)
