"""genai-train: the shared efficient-optimization core.

Trainers (``diffusion``, ``splatting``, ``growth``) import from here; this package imports none of them.
"""

__version__ = "0.1.0"
