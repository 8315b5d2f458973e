"""Smoke tests of `fastgp demo`: files written, metrics in range, clear errors, and a mode-coverage bar."""

from __future__ import annotations

import json

import pytest

from fastgp.cli import main

# The quick profile (400 steps, width 64, seed 0) covered 8/8 modes (50.6% high quality) in every run we made,
# with one thread or two; seeds 1 and 2 covered 6/8 and 5/8. The bar leaves two modes of slack for another
# machine's float rounding on the fixed seed.
QUICK_MODE_BAR = 6


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict]:
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--quick", "--seed", "0", "--no-progress", "--out", str(out)])
    return code, json.loads((out / "metrics.json").read_text()) | {"_out": str(out)}


def test_quick_demo_writes_png_and_metrics(quick_run: tuple[int, dict]) -> None:
    code, metrics = quick_run
    assert code == 0
    from pathlib import Path

    out = Path(metrics["_out"])
    assert (out / "demo.png").stat().st_size > 10_000
    assert metrics["n_modes"] == 8
    assert 0.0 <= metrics["high_quality_share"] <= 1.0
    assert 0.0 < metrics["cover_share"] < 1.0 and "3 sigma" in metrics["cover_rule"]
    assert metrics["ms_per_step"] > 0 and metrics["backend"] == "torch"
    assert metrics["settings"]["penalty"] == "wgan-gp" and metrics["settings"]["loss"] == "wgan"
    assert len(metrics["history"]["grad_norm"]) > 10
    # WGAN-GP drives the critic's gradient norm at interpolates towards 1.
    assert 0.5 < metrics["final_grad_norm"] < 1.5


def test_quick_demo_wgan_gp_covers_modes(quick_run: tuple[int, dict]) -> None:
    _, metrics = quick_run
    assert metrics["modes_covered"] >= QUICK_MODE_BAR, metrics["samples_per_mode"]
    assert metrics["high_quality_share"] >= 0.3


def test_compare_writes_table(tmp_path) -> None:
    code = main(
        ["demo", "--compare", "0-gp", "gn", "--steps", "20", "--no-progress", "--quick", "--out", str(tmp_path)]
    )
    assert code == 0
    payload = json.loads((tmp_path / "compare.json").read_text())
    assert [row["penalty"] for row in payload["rows"]] == ["0-gp", "gn"]
    assert "0-GP" in payload["paper_002_claim"] and "measured" in payload
    assert (tmp_path / "compare.png").exists() and (tmp_path / "compare.txt").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--penalty", "nope"], "invalid choice"),
        (["--loss", "wasserstein"], "invalid choice"),
        (["--steps", "0"], "must be a positive integer"),
        (["--weight", "-1"], "must be a finite number >= 0"),
        (["--data", "mnist"], "invalid choice"),
        (["--compare", "wgan-gp", "bogus"], "unknown penalty 'bogus'"),
    ],
)
def test_bad_arguments_are_argparse_errors(argv: list[str], message: str, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(tmp_path), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_help_states_each_default_once(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and text.count("(default 1000, --quick 400)") == 1
    assert "--seed SEED seeds the weights, the data and the noise" in text
    assert "wgan for wgan-gp and lp" in text  # --loss's default, generated from the table the demo uses
