"""R1 (non-saturating loss): a separate regularisation pass vs sharing D's forward (`fastgp.input_grad`)."""

import pytest

from fastgp import bench


@pytest.mark.parametrize("provider", bench.provider_names("r1"))
@pytest.mark.parametrize("case", bench.op_cases("r1"), ids=str)
def test_r1(bench_case, case: bench.Case, provider: str) -> None:
    bench_case(case, provider)
