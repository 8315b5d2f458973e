"""GN/PGN fwd+bwd: `fastgp.normalize` per backend vs the eager formula and `torch.compile`."""

import pytest

from fastgp import bench


@pytest.mark.parametrize("provider", bench.provider_names("normalize"))
@pytest.mark.parametrize("case", bench.op_cases("normalize"), ids=str)
def test_normalize(bench_case, case: bench.Case, provider: str) -> None:
    bench_case(case, provider)
