"""Reports: the terminal table, the README's Markdown table, the JSON and the PNG."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TABLE_COLUMNS = (
    "case",
    "provider",
    "median ms",
    "host µs",
    "wall ms",
    "× eager",
    "× compile",
    "saved",
    "GB/s",
    "% roofline",
    "launches",
    "targets / note",
)


_NUMERIC = {"median ms", "host µs", "wall ms", "× eager", "× compile", "saved", "GB/s", "% roofline", "launches",
            "beyond critic µs"}  # fmt: skip


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _targets_text(row: dict[str, Any], evaluated: bool) -> str:
    targets = row.get("targets") or []
    if not targets:
        return ""
    if not evaluated:
        return "GPU targets n/a"
    failed = [t["name"] for t in targets if t["pass"] is False]
    met = sum(t["pass"] is True for t in targets)
    text = f"{met}/{len(targets)} met"
    return text + (f"; missed: {', '.join(failed)}" if failed else "")


def table_columns(results: dict[str, Any]) -> list[str]:
    """`TABLE_COLUMNS` (`HOST_COLUMNS` for host-time results), less the host columns on a CPU run (where
    they would repeat ``median ms``)."""
    if results.get("mode") == "host":
        return list(HOST_COLUMNS)
    cuda = results["environment"]["device"] == "cuda"
    return [c for c in TABLE_COLUMNS if cuda or c not in ("host µs", "wall ms")]


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """The table of `table_columns` as strings, one row per case × provider that ran (or ran wrong)."""
    if results.get("mode") == "host":
        return _host_rows(results)
    cuda = results["environment"]["device"] == "cuda"
    evaluated = results.get("targets_evaluated", False)
    out = []
    for r in results["rows"]:
        if r["status"] == "skipped":
            continue
        if r["status"] != "ok":
            out.append([r["case"], r["provider"], r["status"].upper(), "", "", "", "", "", "", "", "", r["reason"]])
            continue
        saved = r["saved_vs_eager"]
        out.append([
            r["case"], r["provider"], _fmt(r["time_ms"], ".4g"), _fmt(r["host_us"], ".1f"), _fmt(r["wall_ms"], ".4g"),
            _fmt(r["speedup_vs_eager"], ".2f", "×"), _fmt(r["speedup_vs_compile"], ".2f", "×"),
            "—" if saved is None or r["provider"] == "eager" else f"{saved:+.0%}",
            _fmt(None if r["bytes_per_s"] is None else r["bytes_per_s"] / 1e9, ".1f"),
            _fmt(None if r["roofline_fraction"] is None else 100 * r["roofline_fraction"], ".0f", "%"),
            _fmt(r["launches"], "d") if cuda else "n/a",
            _targets_text(r, evaluated),
        ])  # fmt: skip
    if not cuda:
        out = [r[:3] + r[5:] for r in out]
    return out


HOST_COLUMNS = ("goal", "case", "device", "provider", "host µs", "beyond critic µs", "× eager", "goal", "met / note")


def _host_rows(results: dict[str, Any]) -> list[list[str]]:
    out = []
    for r in results["rows"]:
        if r["status"] == "skipped":
            continue
        if r["status"] != "ok":
            out.append([r["goal"], r["case"], r["device"], r["provider"], r["status"].upper(), "", "", "", r["reason"]])
            continue
        verdict = {True: "met", False: "MISSED", None: ""}[r["met"]]
        out.append([
            r["goal"], r["case"], r["device"], r["provider"], _fmt(r["host_us"], ".1f"), _fmt(r["overhead_us"], ".1f"),
            _fmt(r["ratio_vs_eager"], ".2f", "×"), r["want"], "; ".join(filter(None, [verdict, r["reason"]])),
        ])  # fmt: skip
    return out


def skipped_lines(results: dict[str, Any]) -> list[str]:
    """One line per (provider, reason) that skipped cases, with how many: the reasons, without repeating them."""
    counts: dict[tuple[str, str], int] = {}
    for r in results["rows"]:
        if r["status"] == "skipped":
            key = (r["provider"], r["reason"])
            counts[key] = counts.get(key, 0) + 1
    return [f"{prov} skipped on {n} case{'s' if n > 1 else ''}: {reason}" for (prov, reason), n in counts.items()]


def header_lines(results: dict[str, Any]) -> list[str]:
    """What the numbers are: device, versions, date, the roofline used (the timer, for host-time results)."""
    env = results["environment"]
    versions = f"torch {env['torch']}, triton {env['triton'] or '—'}, CUDA {env['cuda'] or '—'}"
    lines = [
        f"{env['device_name']} | {versions} | fastgp {env['fastgp']} ({env.get('git_commit') or '?'}) | {env['date']}"
    ]
    if results.get("mode") == "host":
        return [*lines, *_host_header(results)]
    roof = results["roofline"]
    lines.append(f"roofline: {roof['what']}: {roof['bytes_per_s'] / 1e9:.1f} GB/s (read + write)")
    if env["device"] != "cuda":
        lines.append(
            "CPU run: times are CPU times; fused GPU backends are skipped; launches and GPU targets n/a; "
            "'% roofline' is of the CPU copy bandwidth, and cases that fit in cache can exceed 100%."
        )
    if env["device"] == "cuda":
        lines.append(
            "median ms: CUDA events (do_bench, L2 flushed); host µs: CPU time per call, issued without waiting for "
            "the device; wall ms: wall clock per call with a synchronize."
        )
    lines.append("speed-ups are eager time / provider time (higher is better); saved = 1 - provider / eager.")
    return lines


def _host_header(results: dict[str, Any]) -> list[str]:
    settings = results["settings"]
    lines = [
        f"host time: CPU time of the process per call (all threads), median of interleaved rounds; "
        f"{settings['torch_threads']} torch thread(s); the D steps run on CPU tensors."
    ]
    if settings["host_only_launches"]:
        lines.append(
            "triton on CPU tensors: host-only launches for sm_90 (Triton's binder, specialisation and kernel cache; "
            "no driver call, outputs not computed); eager runs its CPU kernels on tiny tensors."
        )
    lines.append(
        "× eager = provider / eager (lower is better); gradient_penalty: of the overhead beyond the critic's own "
        "forward and backward."
    )
    return lines


def format_table(results: dict[str, Any]) -> str:
    """A fixed-width text table for the terminal, then the skipped providers and why."""
    rows, columns = table_rows(results), table_columns(results)
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(columns)]
    line = "  ".join(h.ljust(w) for h, w in zip(columns, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    skipped = skipped_lines(results)
    return "\n".join(
        [
            *header_lines(results),
            "",
            line.rstrip(),
            "-" * len(line.rstrip()),
            *body,
            *([""] if skipped else []),
            *skipped,
        ]
    )


def format_markdown(results: dict[str, Any], *, ops: Sequence[str] | None = None) -> str:
    """The results as a Markdown table (for the README), headed by what they were measured on."""
    keep = dict(results)
    if ops:
        keep["rows"] = [r for r in results["rows"] if r["op"] in ops]
    rows, columns = table_rows(keep), table_columns(keep)
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join(" ---: " if c in _NUMERIC else " --- " for c in columns) + "|"
    body = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    intro = [f"{line}  " for line in header_lines(results)]
    skipped = [f"- {line}" for line in skipped_lines(keep)]
    return "\n".join([*intro, "", head, rule, *body, *([""] if skipped else []), *skipped]) + "\n"


def merge(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One results dict from several runs on the same device (a GPU run split by ``--cases`` to fit a time
    limit); the first run's environment and roofline head the table."""
    names = {p["environment"]["device_name"] for p in parts}
    if len(names) > 1:
        raise ValueError(f"results from different devices cannot share a table: {sorted(names)}")
    return {**parts[0], "rows": [r for p in parts for r in p["rows"]]}


def output_stem(results: dict[str, Any]) -> str:
    """``bench-<device>-<date>``, e.g. ``bench-nvidia-h100-80gb-hbm3-20261123T170005``, for the JSON and PNG."""
    env = results["environment"]
    name = env["device_name"] if env["device"] == "cuda" else "cpu"
    slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    stamp = env["date"].replace("-", "").replace(":", "")[:15]  # to the second: split runs must not collide
    mode = "-host" if results.get("mode") == "host" else ""
    return f"bench-{slug}-{stamp}{mode}" + ("-quick" if results["settings"].get("quick") else "")


def write_json(results: dict[str, Any], path: Path) -> Path:
    """Write `results` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def plot(results: dict[str, Any], path: Path) -> Path:
    """A horizontal bar chart of each provider's speed-up over eager, one group of bars per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r["status"] == "ok" and r["speedup_vs_eager"] is not None]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    provs = list(dict.fromkeys(r["provider"] for r in rows))
    height = 1.0 / (len(provs) + 1)
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.12 * len(rows) + 0.15 * len(cases)))
    for j, prov in enumerate(provs):
        ys, xs = [], []
        for i, case in enumerate(cases):
            for r in rows:
                if r["case"] == case and r["provider"] == prov:
                    ys.append(i + j * height)
                    xs.append(r["speedup_vs_eager"])
        ax.barh(ys, xs, height=height, label=prov)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks([i + height * (len(provs) - 1) / 2 for i in range(len(cases))], cases, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up over eager (higher is better)")
    env = results["environment"]
    ax.set_title(f"fastgp bench — {env['device_name']}, torch {env['torch']}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
