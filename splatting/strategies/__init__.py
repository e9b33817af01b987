"""Densification strategies with gsplat's interface: a dataclass of paper defaults, an explicit state
dict, and two hooks (``step_pre_backward``, ``step_post_backward``) around ``loss.backward()``.

The ``strategy`` section of the training config is a tagged union, ``ADCConfig | SteepGSConfig | MCMCConfig``:
``--strategy.name`` picks ADC (the 3DGS baseline), SteepGS or 3DGS-MCMC, and each variant carries only its
own fields with its own defaults. The schedule, pruning and reset fields of SteepGS are ADC's, so a comparison
of the two changes only how Gaussians are added; MCMC has its own schedule (relocation, growth to a cap).
"""

from dataclasses import dataclass, field, fields
from typing import Literal

from splatting.strategies.adc import ADCStrategy
from splatting.strategies.mcmc import MCMCStrategy
from splatting.strategies.steepgs import SteepGSStrategy

__all__ = [
    "ADCStrategy",
    "SteepGSStrategy",
    "MCMCStrategy",
    "ADCConfig",
    "SteepGSConfig",
    "MCMCConfig",
    "StrategyConfig",
]

_NAME_HELP = (
    "adc: clone/split by 2-D gradient (3DGS); steepgs: split saddle points once along the steepest direction; "
    "mcmc: relocate dead Gaussians and grow to cap_max (3DGS as Markov Chain Monte Carlo)"
)


def _build(cfg, cls):
    return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


@dataclass
class ADCConfig(ADCStrategy):
    """``strategy.name=adc``: adaptive density control of 3D Gaussian Splatting (gsplat's defaults)."""

    name: Literal["adc"] = field(default="adc", metadata={"help": _NAME_HELP})

    def build(self) -> ADCStrategy:
        """The strategy object this section describes."""
        return _build(self, ADCStrategy)


@dataclass
class SteepGSConfig(SteepGSStrategy):
    """``strategy.name=steepgs``: steepest-descent density control (the paper's defaults)."""

    name: Literal["steepgs"] = field(default="steepgs", metadata={"help": _NAME_HELP})

    def build(self) -> SteepGSStrategy:
        return _build(self, SteepGSStrategy)


@dataclass
class MCMCConfig(MCMCStrategy):
    """``strategy.name=mcmc``: 3D Gaussian Splatting as Markov Chain Monte Carlo (gsplat's MCMCStrategy defaults)."""

    name: Literal["mcmc"] = field(default="mcmc", metadata={"help": _NAME_HELP})

    def build(self) -> MCMCStrategy:
        return _build(self, MCMCStrategy)


StrategyConfig = ADCConfig | SteepGSConfig | MCMCConfig
