"""ComfyUI entry point of the NoiseAR node pack (classic API: NODE_CLASS_MAPPINGS).

ComfyUI imports this folder as a package named after its path, so the pack's own modules are
reached relatively (`.nodes`). The library is imported absolutely as `noisear`: the one place that
makes that possible is here, by putting this folder on sys.path (appended, so ComfyUI's own
top-level modules, e.g. its `nodes`, keep precedence). Importing this file outside ComfyUI works:
the nodes then only fail when they are run.
"""

import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

if __package__:  # ComfyUI imports this folder as a package (any folder name, e.g. ComfyUI-NoiseAR)
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # pytest imports it as a lone module when the folder name is not an identifier: nothing to register
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
