"""Photon: instruction-conditioned visual token pruning for Qwen-VL models.

Public API: attach(), detach(), last_selection(), load(), load_config().
Heavy modules (transformers) load on first use, so `import photon` stays fast.
"""

from photon.core import compat
from photon.core.config import load_config
from photon.core.errors import PhotonError

compat.warn_if_untested()  # once, from the installed version's metadata (transformers is not imported)

__version__ = "0.1.0"

__all__ = ["attach", "detach", "last_selection", "load", "load_config", "PhotonError", "__version__"]


def __getattr__(name):
    if name in ("attach", "detach", "last_selection"):
        from photon.core import api

        return getattr(api, name)
    if name == "load":
        from photon.opening import load

        return load
    raise AttributeError(f"module 'photon' has no attribute {name!r}")
