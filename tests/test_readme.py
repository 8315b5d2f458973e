"""The README's quick-start training loop runs as printed (shortened to two generator steps)."""

from __future__ import annotations

import math
import re
from pathlib import Path

from fastgp.cli._args import threads

README = Path(__file__).resolve().parent.parent / "README.md"


def test_quick_start_training_step_runs(capsys) -> None:
    section = README.read_text(encoding="utf-8").split("\n### A training step")[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "n_critic" in code and "opt_d.step()" in code and "opt_g.step()" in code
    short = code.replace("for step in range(300):", "for step in range(2):")
    assert short != code, "the loop's header changed: update this test"
    names: dict = {"__name__": "readme"}
    with threads(1):
        exec(compile(short, "README.md", "exec"), names)
    assert math.isfinite(names["gp"].item()) and names["gp"].item() >= 0
    assert all(p.grad is not None for p in names["D"].parameters())
    assert capsys.readouterr().out.startswith("step 0: D loss ")
