"""WGAN-GP interpolation (forward): `fastgp.interpolate` per backend vs eager `torch.lerp` and `torch.compile`."""

import pytest

from fastgp import bench


@pytest.mark.parametrize("provider", bench.provider_names("interpolate"))
@pytest.mark.parametrize("case", bench.op_cases("interpolate"), ids=str)
def test_interpolate(bench_case, case: bench.Case, provider: str) -> None:
    bench_case(case, provider)
