"""ComfyUI adapter for NoiseAR. `definitions` holds every node class, `widgets` their shared inputs and checks,
`host` is the only module that imports ComfyUI; the other modules are the logic the nodes call."""

from . import host
from .definitions import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

host.register_model_folder()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
