"""Penalty head fwd+bwd on g: `fastgp.penalty_from_grad` per backend vs eager (`vector_norm`) and `torch.compile`."""

import pytest

from fastgp import bench


@pytest.mark.parametrize("provider", bench.provider_names("penalty"))
@pytest.mark.parametrize("case", bench.op_cases("penalty"), ids=str)
def test_penalty(bench_case, case: bench.Case, provider: str) -> None:
    bench_case(case, provider)
