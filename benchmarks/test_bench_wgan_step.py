"""A whole WGAN-GP discriminator step (DCGAN CIFAR critic; MLP on 2-D data): eager vs `gradient_penalty`."""

import pytest

from fastgp import bench


@pytest.mark.parametrize("provider", bench.provider_names("wgan_step"))
@pytest.mark.parametrize("case", bench.op_cases("wgan_step"), ids=str)
def test_wgan_step(bench_case, case: bench.Case, provider: str) -> None:
    bench_case(case, provider)
