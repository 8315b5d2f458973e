"""Named penalty settings from the papers (SPEC.md §3): ``fastgp.presets["wgan-gp"]``."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from functools import cached_property
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Preset:
    """One row of SPEC.md §3's preset table; `as_kwargs()` gives `gradient_penalty` arguments.

    `reduction` is the batch reduction, ``max`` for max-GP only. `method` and `sigma` are set by the
    approximated R1/R2 presets only (``method="ar"``, noise of standard deviation `sigma`);
    `as_kwargs()` leaves out the fields that keep their defaults.
    """

    points: str
    norm: str
    constraint: str
    center: float
    weight: float
    source: str
    method: str = "exact"
    sigma: float | None = None
    # Keyword-only, so that later fields can be given by position whatever their order.
    reduction: str = field(default="mean", kw_only=True)

    def as_kwargs(self) -> dict[str, Any]:
        return dict(self._kwargs)

    @cached_property
    def _kwargs(self) -> dict[str, Any]:
        # Read on every `gradient_penalty` call: the walk over the fields is made once per preset.
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "source" and (f.default is MISSING or getattr(self, f.name) != f.default)
        }


presets: MappingProxyType[str, Preset] = MappingProxyType(
    {
        "wgan-gp": Preset("interpolate", "l2", "ls", 1.0, 10.0, "Gulrajani et al. 2017"),
        "0-gp": Preset("interpolate", "l2", "ls", 0.0, 10.0, "Thanh-Tung et al. 2019"),
        "r1": Preset("real", "l2", "ls", 0.0, 5.0, "Mescheder et al. 2018 (γ/2, γ = 10)"),
        "r2": Preset("fake", "l2", "ls", 0.0, 5.0, "Mescheder et al. 2018 (γ/2, γ = 10)"),
        "lp": Preset("interpolate", "l2", "squared_hinge", 1.0, 10.0, "Petzka et al. 2018"),
        "dragan": Preset("dragan", "l2", "ls", 1.0, 10.0, "Kodali et al. 2017"),
        "max-margin": Preset("interpolate", "linf", "hinge", 1.0, 20.0, "Jolicoeur-Martineau & Mitliagkas, Table 2"),
        # Lipschitz GANs' MaxGP, λ · max_i ‖∇f(x̂_i)‖²: λ = 0.1 is the default of the authors' code for the
        # paper's CIFAR-10 runs (they sweep 0.01-10); StudioGAN's LGAN configs use 10.
        "max-gp": Preset("interpolate", "l2", "ls", 0.0, 0.1, "Zhou et al. 2019 (Lipschitz GANs)", reduction="max"),
        # APT's λ = 100, σ = 0.01 (images): in expectation R1/R2 with weight λσ² = 0.01 (fastgp.first_order).
        "ar1": Preset("real", "l2", "ls", 0.0, 100.0, "Lin et al. 2025 (APT), approximated R1", "ar", 0.01),
        "ar2": Preset("fake", "l2", "ls", 0.0, 100.0, "Lin et al. 2025 (APT), approximated R2", "ar", 0.01),
    }
)
