"""Built-in backbone families; importing this package registers each of them."""

from retune.backbones.families import default  # noqa: F401
from retune.backbones.families import hf_family  # noqa: F401
from retune.backbones.families import open_clip_family  # noqa: F401
from retune.backbones.families import biovil_family  # noqa: F401
