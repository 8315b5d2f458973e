"""`fastgp demo`: train a small GAN on a 2-D toy set with one penalty, show progress, write a PNG and a JSON.

A new user's first command: it runs in under a minute on a laptop CPU and uses only the public API
(`fastgp.gradient_penalty`, `fastgp.normalized`, `fastgp.input_grad`, `fastgp.grad_norms`, `fastgp.losses`).
`--compare` trains several penalties on the same seed and data and sets them side by side, with Thanh-Tung et al.'s
8-Gaussians claim printed beside the measured numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import fastgp
from fastgp.cli._args import non_negative_float, positive_float, positive_int, threads
from fastgp.toy import DATASETS, Critic, ToyData, make_dataset, mlp

NORMALIZATIONS = ("gn", "pgn")
# The loss each penalty was proposed with: WGAN-GP and LP with the Wasserstein loss, 0-GP/R1/DRAGAN with the
# standard GAN loss (Thanh-Tung et al. 2019, Mescheder et al. 2018, Kodali et al. 2017), max-margin with
# hinge (max-margin paper, Table 2), GN with
# the standard loss (Wu et al. 2021) and PGN with hinge (Xia §IV).
DEFAULT_LOSS = {"wgan-gp": "wgan", "lp": "wgan", "max-margin": "hinge", "pgn": "hinge"}
COMPARE_DEFAULT = ("wgan-gp", "0-gp", "max-margin", "r1", "gn")
PAPER_002_CLAIM = (
    "Thanh-Tung et al. 2019 (§4 and Fig. 2): on 8 Gaussians scaled x10, GAN-0-GP learns all 8 modes, while "
    "GANs with the other penalties (1-GP as in WGAN-GP, 0-GP-sample as in R1) fail and collapse to different "
    "extents. Their setting: standard GAN loss, SGD, 512-unit MLPs, 10,000 iterations; ours is this command's."
)
Z_DIM = 8
EVAL_SAMPLES = 2500


@dataclass
class Settings:
    """Everything that determines one training run."""

    data: str = "8gaussians"
    penalty: str = "wgan-gp"
    loss: str = "wgan"
    norm: str | None = None
    constraint: str | None = None
    weight: float | None = None
    steps: int = 1000
    n_critic: int = 5
    batch_size: int = 256
    width: int = 128
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    backend: str = "auto"


@dataclass
class RunResult:
    """A trained pair, its training curves and its metrics."""

    settings: Settings
    generator: nn.Module
    critic: Callable[[Tensor], Tensor]
    data: ToyData
    history: dict[str, list[float]] = field(default_factory=dict)
    track: dict[str, list[float]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def _penalty_overrides(s: Settings) -> dict[str, Any]:
    given = {"norm": s.norm, "constraint": s.constraint, "weight": s.weight}
    return {k: v for k, v in given.items() if v is not None}


def _scores_for_g(critic: Callable[[Tensor], Tensor], loss: str, fake: Tensor, real: Tensor) -> Tensor:
    s = critic(fake)
    if loss.startswith(("rp-", "ra-")):
        return fastgp.losses.g_loss(loss, s, real_scores=critic(real))
    return fastgp.losses.g_loss(loss, s)


def train(s: Settings, progress: bool = True, desc: str | None = None) -> RunResult:
    """Train a generator and critic with `s`, returning both, the curves and the metrics."""
    from tqdm.auto import tqdm

    torch.manual_seed(s.seed)
    device = torch.device(s.device)
    data = make_dataset(s.data)
    gen = torch.Generator().manual_seed(s.seed)
    G = mlp(Z_DIM, 2, s.width, 3, out_scale=data.scale).to(device)
    D = Critic(s.width, 3).to(device)
    normalizing = s.penalty in NORMALIZATIONS
    # GN/PGN replace the critic by its normalised version everywhere, for D's and G's losses alike.
    critic: Callable[[Tensor], Tensor] = (
        fastgp.normalized(D, mode=s.penalty, norm=s.norm or "l2", backend=s.backend) if normalizing else D
    )
    # (0.5, 0.9) is WGAN-GP's choice; on these toys it also keeps the standard loss from oscillating.
    opt_d = torch.optim.Adam(D.parameters(), lr=s.lr, betas=(0.5, 0.9))
    opt_g = torch.optim.Adam(G.parameters(), lr=s.lr, betas=(0.5, 0.9))
    overrides = _penalty_overrides(s)

    def batch() -> tuple[Tensor, Tensor]:
        real = data.sample(s.batch_size, gen).to(device)
        z = torch.randn(s.batch_size, Z_DIM, generator=gen).to(device)
        return real, z

    history: dict[str, list[float]] = {"step": [], "d_loss": [], "g_loss": [], "penalty": [], "grad_norm": []}
    track: dict[str, list[float]] = {"step": [], "modes_covered": [], "high_quality_share": []}
    log_every = max(1, s.steps // 100)
    track_every = max(1, s.steps // 20)
    z_track = torch.randn(1000, Z_DIM, generator=torch.Generator().manual_seed(30_000 + s.seed)).to(device)
    bar = tqdm(range(s.steps), desc=desc or s.penalty, disable=not progress, leave=True, mininterval=0.5)
    start = time.perf_counter()
    for step in bar:
        for _ in range(s.n_critic):
            real, z = batch()
            with torch.no_grad():
                fake = G(z)
            d_loss = fastgp.losses.d_loss(s.loss, critic(real), critic(fake))
            penalty = torch.zeros((), device=device)
            if not normalizing and s.penalty != "none":
                penalty = fastgp.gradient_penalty(D, real, fake, preset=s.penalty, backend=s.backend, **overrides)
            opt_d.zero_grad(set_to_none=True)
            (d_loss + penalty).backward()
            opt_d.step()
        real, z = batch()
        g_loss = _scores_for_g(critic, s.loss, G(z), real)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        if step % log_every == 0 or step == s.steps - 1:
            # The L2 norm of the effective critic's input gradient at interpolates, the same quantity for every
            # penalty: WGAN-GP drives it to 1, 0-GP towards 0, GN keeps it at most 1 by construction.
            x_hat = fastgp.interpolate(real, G(z).detach())
            _, grad = fastgp.input_grad(critic, x_hat)
            gnorm = float(fastgp.grad_norms(grad.detach()).mean())
            row = (step, float(d_loss.detach()), float(g_loss.detach()), float(penalty.detach()), gnorm)
            for key, value in zip(history, row, strict=True):
                history[key].append(value)
            bar.set_postfix(D=f"{row[1]:.3f}", G=f"{row[2]:.3f}", pen=f"{row[3]:.3f}", gnorm=f"{gnorm:.2f}")
        if (step + 1) % track_every == 0:
            with torch.no_grad():
                m = data.metrics(G(z_track))
            track["step"].append(step + 1)
            track["modes_covered"].append(m["modes_covered"])
            track["high_quality_share"].append(m["high_quality_share"])
    elapsed = time.perf_counter() - start
    bar.close()
    result = RunResult(s, G, critic, data, history, track)
    result.metrics = evaluate(result, elapsed)
    return result


def evaluate(result: RunResult, elapsed: float) -> dict[str, Any]:
    """Mode coverage, sample quality and W-distance estimate on held-out samples (fixed seed, not the training one)."""
    s, data = result.settings, result.data
    device = torch.device(s.device)
    gen = torch.Generator().manual_seed(10_000 + s.seed)
    real = data.sample(EVAL_SAMPLES, gen).to(device)
    z = torch.randn(EVAL_SAMPLES, Z_DIM, generator=gen).to(device)
    with torch.no_grad():
        fake = result.generator(z)
    # GN's critic differentiates D inside its forward, so it needs autograd on even for evaluation.
    with torch.enable_grad():
        gap = float((result.critic(real).mean() - result.critic(fake).mean()).detach())
    modes = data.metrics(fake)
    return {
        **modes,
        "cover_share": data.cover_share,
        "cover_rule": (
            f"a mode is covered when at least {data.cover_share:.4g} of {EVAL_SAMPLES} generated samples lie within "
            f"3 sigma (sigma = {data.sigma}) of it; a sample is high quality when within 3 sigma of some mode"
        ),
        "w_distance_estimate": gap,
        "w_distance_note": "mean D(real) - mean D(fake) on a held-out batch; a Wasserstein estimate only for a "
        "1-Lipschitz critic (wgan-gp, lp), a critic gap otherwise",
        "final_grad_norm": result.history["grad_norm"][-1],
        "seconds": elapsed,
        "ms_per_step": 1000.0 * elapsed / max(1, s.steps),
        "backend": fastgp.backend_for(s.device, s.backend),
        "device": s.device,
        "settings": vars(s).copy(),
    }


# ----------------------------------------------------------------------------------------------- figures


def _critic_panel(ax: Any, result: RunResult, samples: int = 1000) -> None:
    """Real vs generated samples over the critic's level sets and gradient field."""
    s, data = result.settings, result.data
    device = torch.device(s.device)
    lim = 1.35 * data.scale
    n = 120
    axis = torch.linspace(-lim, lim, n)
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1).to(device)
    with torch.enable_grad():
        values, grads = fastgp.input_grad(result.critic, grid)
    values = values.detach().cpu().reshape(n, n)
    ax.contourf(gx, gy, values, levels=20, cmap="coolwarm", alpha=0.55)
    ax.contour(gx, gy, values, levels=20, colors="k", linewidths=0.3, alpha=0.4)
    step = 8
    g = grads.detach().cpu().reshape(n, n, 2)[::step, ::step]
    ax.quiver(gx[::step, ::step], gy[::step, ::step], g[..., 0], g[..., 1], color="0.2", alpha=0.6, width=0.003)
    gen = torch.Generator().manual_seed(20_000 + s.seed)
    real = data.sample(samples, gen)
    with torch.no_grad():
        fake = result.generator(torch.randn(samples, Z_DIM, generator=gen).to(device)).cpu()
    ax.scatter(real[:, 0], real[:, 1], s=2, c="tab:green", label="real", alpha=0.6)
    ax.scatter(fake[:, 0], fake[:, 1], s=2, c="tab:orange", label="generated", alpha=0.6)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    m = result.metrics
    ax.set_title(
        f"{s.penalty} ({s.loss} loss): {m['modes_covered']}/{m['n_modes']} modes, "
        f"{100 * m['high_quality_share']:.0f}% high quality",
        fontsize=9,
    )


def write_figure(result: RunResult, path: Path) -> None:
    """Samples over the critic, then the loss curves, then the gradient-norm curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 5), gridspec_kw={"width_ratios": [1.2, 1, 1]})
    _critic_panel(axes[0], result)
    axes[0].legend(loc="lower right", markerscale=4, fontsize=8)
    h = result.history
    axes[1].plot(h["step"], h["d_loss"], label="D loss")
    axes[1].plot(h["step"], h["g_loss"], label="G loss")
    axes[1].plot(h["step"], h["penalty"], label="penalty")
    axes[1].set_xlabel("generator step")
    axes[1].set_title("losses", fontsize=9)
    axes[1].legend(fontsize=8)
    axes[2].plot(h["step"], h["grad_norm"], color="tab:purple")
    axes[2].axhline(1.0, color="0.5", linestyle="--", linewidth=0.8)
    axes[2].set_xlabel("generator step")
    axes[2].set_title("mean ‖∇D(x̂)‖₂ at interpolates", fontsize=9)
    s, m = result.settings, result.metrics
    fig.suptitle(
        f"fastgp demo: {s.data}, {s.steps} steps, seed {s.seed}, {m['ms_per_step']:.1f} ms/step on {s.device}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_compare_figure(results: list[RunResult], path: Path) -> None:
    """One sample panel per penalty, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.6), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        _critic_panel(ax, result)
    s = results[0].settings
    fig.suptitle(f"fastgp demo --compare: {s.data}, {s.steps} steps, seed {s.seed}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- command line


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fastgp demo` to the dispatcher."""
    penalties = (*fastgp.presets, *NORMALIZATIONS, "none")
    p = subparsers.add_parser(
        "demo",
        help="train a small GAN on a 2-D toy set with a gradient penalty; writes a PNG and metrics",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", choices=DATASETS, default="8gaussians", help="built-in 2-D data set")
    p.add_argument("--penalty", choices=penalties, default="wgan-gp", help="a preset, gn/pgn normalisation, or none")
    p.add_argument("--loss", choices=fastgp.losses.NAMES, default=None, help="critic loss (default: the penalty's own)")
    p.add_argument("--norm", choices=("l2", "l1", "linf"), default=None, help="override the preset's norm")
    p.add_argument("--constraint", choices=("ls", "hinge", "squared_hinge"), default=None, help="override")
    p.add_argument("--weight", type=non_negative_float, default=None, help="override the preset's λ")
    p.add_argument("--steps", type=positive_int, default=None, help="generator steps (default 1000, --quick 400)")
    p.add_argument("--n-critic", type=positive_int, default=5, help="critic steps per generator step")
    p.add_argument("--batch-size", type=positive_int, default=None, help="default 256, --quick 128")
    p.add_argument("--width", type=positive_int, default=None, help="MLP width (default 128, --quick 64)")
    p.add_argument("--lr", type=positive_float, default=None, help="Adam lr of G and D (default 1e-3, --quick 2e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--backend", choices=("auto", *fastgp.backends()), default="auto", help="fastgp backend")
    p.add_argument("--out", type=Path, default=Path("fastgp-demo"), help="output folder")
    p.add_argument("--quick", action="store_true", help="a short run (< 20 s on 2 CPU cores)")
    p.add_argument(
        "--compare",
        nargs="*",
        metavar="PENALTY",
        default=None,
        help=f"train several penalties side by side (default: {' '.join(COMPARE_DEFAULT)})",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run, _parser=p, _penalties=penalties)


def _settings(args: argparse.Namespace, penalty: str) -> Settings:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    profile = QUICK_PROFILE if args.quick else DEFAULT_PROFILE
    given = {key: getattr(args, key) for key in profile}
    chosen = {key: profile[key] if value is None else value for key, value in given.items()}
    loss = args.loss or DEFAULT_LOSS.get(penalty, "ns")
    return Settings(
        data=args.data,
        penalty=penalty,
        loss=loss,
        norm=args.norm,
        constraint=args.constraint,
        weight=args.weight,
        n_critic=args.n_critic,
        seed=args.seed,
        device=device,
        backend=args.backend,
        **chosen,
    )


# Measured on 8 Gaussians with wgan-gp (seed 0): the default covers 8/8 modes from about step 500; the quick
# profile trades width and batch for a higher learning rate and reaches 8/8 around step 300 of 400.
DEFAULT_PROFILE = {"steps": 1000, "width": 128, "batch_size": 256, "lr": 1e-3}
QUICK_PROFILE = {"steps": 400, "width": 64, "batch_size": 128, "lr": 2e-3}


def run(args: argparse.Namespace) -> int:
    """Entry point of `fastgp demo`."""
    parser: argparse.ArgumentParser = args._parser
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if args.compare is not None:
        penalties = args.compare or list(COMPARE_DEFAULT)
        unknown = [p for p in penalties if p not in args._penalties]
        if unknown:
            parser.error(f"--compare: unknown penalty {unknown[0]!r} (choose from {', '.join(args._penalties)})")
    args.out.mkdir(parents=True, exist_ok=True)
    with threads(1):
        if args.compare is not None:
            return _run_compare(args, penalties)
        return _run_one(args)


def _run_one(args: argparse.Namespace) -> int:
    s = _settings(args, args.penalty)
    result = train(s, progress=not args.no_progress)
    write_figure(result, args.out / "demo.png")
    (args.out / "metrics.json").write_text(
        json.dumps({**result.metrics, "history": result.history, "coverage_curve": result.track}, indent=2)
    )
    m = result.metrics
    print(
        f"{s.penalty} ({s.loss} loss) on {s.data}: {m['modes_covered']}/{m['n_modes']} modes covered, "
        f"{100 * m['high_quality_share']:.1f}% high-quality samples, W-distance estimate "
        f"{m['w_distance_estimate']:.3f}, {m['ms_per_step']:.1f} ms/step ({m['seconds']:.1f} s, backend "
        f"{m['backend']} on {m['device']})"
    )
    print(f"wrote {args.out / 'demo.png'} and {args.out / 'metrics.json'}")
    return 0


def _run_compare(args: argparse.Namespace, penalties: list[str]) -> int:
    results = []
    for penalty in penalties:
        results.append(train(_settings(args, penalty), progress=not args.no_progress, desc=penalty))
    write_compare_figure(results, args.out / "compare.png")
    rows = [
        {
            "penalty": r.settings.penalty,
            "loss": r.settings.loss,
            "modes_covered": r.metrics["modes_covered"],
            "n_modes": r.metrics["n_modes"],
            "high_quality_share": r.metrics["high_quality_share"],
            "w_distance_estimate": r.metrics["w_distance_estimate"],
            "seconds": r.metrics["seconds"],
        }
        for r in results
    ]
    lines = [f"{'penalty':<12} {'loss':<6} {'modes':>7} {'high-quality':>13} {'D gap':>8} {'seconds':>8}"]
    for row in rows:
        lines.append(
            f"{row['penalty']:<12} {row['loss']:<6} {row['modes_covered']:>3}/{row['n_modes']:<3} "
            f"{100 * row['high_quality_share']:>12.1f}% {row['w_distance_estimate']:>8.3f} {row['seconds']:>8.1f}"
        )
    table = "\n".join(lines)
    s = results[0].settings
    header = f"{s.data}, {s.steps} steps, seed {s.seed}, {results[0].metrics['cover_rule']}"
    print(header)
    print(table)
    payload: dict[str, Any] = {"rows": rows, "cover_rule": results[0].metrics["cover_rule"], "settings": vars(s)}
    if s.data == "8gaussians":
        zero_gp = next((r for r in rows if r["penalty"] == "0-gp"), None)
        others = [r for r in rows if r["penalty"] != "0-gp"]
        first = f"0-GP {zero_gp['modes_covered']}/8 modes" if zero_gp else "0-gp not run"
        measured = f"measured here: {first}; " + ", ".join(f"{r['penalty']} {r['modes_covered']}/8" for r in others)
        payload["paper_002_claim"] = PAPER_002_CLAIM
        payload["measured"] = measured
        print(PAPER_002_CLAIM)
        print(measured)
    (args.out / "compare.json").write_text(json.dumps(payload, indent=2))
    (args.out / "compare.txt").write_text(header + "\n" + table + "\n")
    print(f"wrote {args.out / 'compare.png'}, {args.out / 'compare.json'} and {args.out / 'compare.txt'}")
    return 0
