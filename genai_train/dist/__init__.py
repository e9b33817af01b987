"""Training across regions joined by slow links: HALoS, DiLoCo and Async Local-SGD beside DDP.

``config`` (``dist.*``, regions files), ``algorithms`` (the update rules as pure functions), ``roles`` (workers
and servers as message-driven state machines), ``transport`` (link model; torch.distributed point-to-point),
``sim`` (the same roles on a virtual clock), ``task`` (a worker's own training), ``runner`` (the run lifecycle).
"""

from genai_train.dist.config import DistConfig, Layout, Regions, load_regions

__all__ = ["DistConfig", "Layout", "Regions", "load_regions"]
