"""ComfyUI adapter for NoiseAR. `host` is the only module that imports ComfyUI."""

from . import host
from .definitions import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

host.register_model_folder()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
