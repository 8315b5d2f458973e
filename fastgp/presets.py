"""Named penalty settings from the papers (SPEC.md §3): ``fastgp.presets["wgan-gp"]``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Preset:
    """One row of SPEC.md §3's preset table; `as_kwargs()` gives `gradient_penalty` arguments."""

    points: str
    norm: str
    constraint: str
    center: float
    weight: float
    source: str

    def as_kwargs(self) -> dict[str, Any]:
        kwargs = asdict(self)
        del kwargs["source"]
        return kwargs


presets: MappingProxyType[str, Preset] = MappingProxyType(
    {
        "wgan-gp": Preset("interpolate", "l2", "ls", 1.0, 10.0, "Gulrajani et al. 2017"),
        "0-gp": Preset("interpolate", "l2", "ls", 0.0, 10.0, "Thanh-Tung et al. 2019"),
        "r1": Preset("real", "l2", "ls", 0.0, 5.0, "Mescheder et al. 2018 (γ/2, γ = 10)"),
        "r2": Preset("fake", "l2", "ls", 0.0, 5.0, "Mescheder et al. 2018 (γ/2, γ = 10)"),
        "lp": Preset("interpolate", "l2", "squared_hinge", 1.0, 10.0, "Petzka et al. 2018"),
        "dragan": Preset("dragan", "l2", "ls", 1.0, 10.0, "Kodali et al. 2017"),
        "max-margin": Preset("interpolate", "linf", "hinge", 1.0, 20.0, "Jolicoeur-Martineau & Mitliagkas, Table 2"),
    }
)
