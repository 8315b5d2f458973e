"""Smoke tests of `fastgp margins`: table, JSON and CSV written, margins finite, clear errors."""

from __future__ import annotations

import csv
import json
import math

import pytest

from fastgp.cli import main


def test_quick_margins(tmp_path, capsys) -> None:
    code = main(["margins", "--quick", "--no-progress", "--out", str(tmp_path)])
    assert code == 0
    payload = json.loads((tmp_path / "margins.json").read_text())
    rows = payload["rows"]
    assert len(rows) == 7 and rows[0]["setting"] == "no penalty"
    assert payload["settings"]["steps"] == 400 and payload["settings"]["batch_size"] == 64
    for row in rows:
        for p in ("p=2", "p=1", "p=inf"):
            assert math.isfinite(row[p])
            assert row[f"paper {p}"] > 0
        # --quick trains every classifier past chance (at 150 steps the least-squares rows sat at 30-40%),
        # so its margins are positive and mean what the defaults' do.
        assert 0.55 <= row["accuracy"] <= 1.0 and row["p=2"] > 0, row
    # Hölder: ‖g‖∞ ≤ ‖g‖₂ ≤ ‖g‖₁, so for a correctly classified point the L1 margin (÷‖g‖∞) is the largest and
    # the L∞ margin (÷‖g‖₁) the smallest; the no-penalty classifier is mostly right already.
    assert rows[0]["p=1"] >= rows[0]["p=2"] >= rows[0]["p=inf"]
    with open(tmp_path / "margins.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 7
    printed = capsys.readouterr().out
    assert "2 to 3 times" in printed and "Measured here" in printed and "% without" in printed
    # Neighbouring columns of the header stay apart.
    header = printed.splitlines()[1]
    assert header.count("ours (x none) | paper (x none)") == 3 and ")ours" not in header


def test_tanh_margins_run(tmp_path) -> None:
    argv = ["margins", "--quick", "--steps", "20", "--activation", "tanh", "--no-progress", "--out", str(tmp_path)]
    assert main(argv) == 0
    payload = json.loads((tmp_path / "margins.json").read_text())
    assert payload["settings"]["activation"] == "tanh"
    assert all(math.isfinite(row["p=2"]) for row in payload["rows"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "-3"], "must be a positive integer"),
        (["--weight", "nan"], "must be a finite number >= 0"),
        (["--activation", "gelu"], "invalid choice"),
    ],
)
def test_bad_arguments_are_argparse_errors(argv: list[str], message: str, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["margins", "--out", str(tmp_path), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
