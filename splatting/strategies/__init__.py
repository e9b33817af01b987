"""Densification strategies with gsplat's interface: a dataclass of paper defaults, an explicit state
dict, and two hooks (``step_pre_backward``, ``step_post_backward``) around ``loss.backward()``.

``DensifyConfig`` is the ``strategy`` section of the training config: ``name`` picks ADC (the 3DGS
baseline) or SteepGS; the schedule, pruning and reset fields are shared, so a comparison of the two
changes only how Gaussians are added.
"""

from dataclasses import dataclass, field, fields
from typing import Literal

from splatting.strategies.adc import ADCStrategy
from splatting.strategies.steepgs import SteepGSStrategy

__all__ = ["ADCStrategy", "SteepGSStrategy", "DensifyConfig"]


@dataclass
class DensifyConfig(SteepGSStrategy):
    name: Literal["adc", "steepgs"] = field(
        default="adc",
        metadata={
            "help": "adc: clone/split by 2-D gradient (3DGS); steepgs: split saddle points "
            "once along the steepest direction (the estimator/split fields apply)"
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.name not in ("adc", "steepgs"):
            raise ValueError(f"strategy.name={self.name!r}; choose adc or steepgs")

    def build(self) -> ADCStrategy:
        """The strategy object this section describes."""
        cls = SteepGSStrategy if self.name == "steepgs" else ADCStrategy
        return cls(**{f.name: getattr(self, f.name) for f in fields(cls)})
