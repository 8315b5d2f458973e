import os
import random
from collections import Counter

import pytest
import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, so it must be set before fastgp.ops
# is imported. Without a GPU the Triton tests then run on CPU tensors through the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def fresh_seed() -> int:
    """Fresh random inputs every run; the seed is printed so a failure can be replayed."""
    seed = int(os.environ.get("FASTGP_TEST_SEED", random.randrange(2**31)))
    torch.manual_seed(seed)
    print(f"FASTGP_TEST_SEED={seed}")
    return seed


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line saying why tests were skipped (``-q`` alone only counts them), e.g. on a machine without a GPU."""
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        counts = Counter(_skip_reason(report) for report in skipped)
        reasons = "; ".join(f"{reason} ({n})" for reason, n in counts.most_common())
        terminalreporter.write_line(f"{len(skipped)} skipped: {reasons}", yellow=True)
