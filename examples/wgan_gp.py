"""WGAN-GP (Gulrajani et al. 2017, Algorithm 1) on CIFAR-shaped data, with fastgp's penalty.

Random 3x32x32 images stand in for CIFAR-10 so that the script runs anywhere without a download;
swap `batches()` for a real loader. `python examples/wgan_gp.py --steps 5` runs in seconds on a CPU.
With `--amp`, D and G run under autocast (float16 with a GradScaler on CUDA, bfloat16 on CPU) and
the scaler is handed to `gradient_penalty`, which takes the input gradient of the scaled scores and
unscales it before the norm (PyTorch's AMP gradient-penalty recipe).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator

import torch
from torch import nn

import fastgp


def generator(z_dim: int = 64, ch: int = 64) -> nn.Module:
    return nn.Sequential(
        nn.Linear(z_dim, 4 * 4 * ch),
        nn.Unflatten(1, (ch, 4, 4)),
        nn.ReLU(),
        nn.ConvTranspose2d(ch, ch // 2, 4, stride=2, padding=1),  # 8x8
        nn.ReLU(),
        nn.ConvTranspose2d(ch // 2, ch // 4, 4, stride=2, padding=1),  # 16x16
        nn.ReLU(),
        nn.ConvTranspose2d(ch // 4, 3, 4, stride=2, padding=1),  # 32x32
        nn.Tanh(),
    )


def critic(ch: int = 64) -> nn.Module:
    # No BatchNorm: the penalty needs per-sample gradients (Gulrajani et al. §4 use layer norm or none).
    return nn.Sequential(
        nn.Conv2d(3, ch // 4, 4, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(ch // 4, ch // 2, 4, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(ch // 2, ch, 4, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(4 * 4 * ch, 1),
    )


def batches(batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    while True:
        yield torch.rand(batch_size, 3, 32, 32, device=device) * 2 - 1


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000, help="critic steps")
    p.add_argument("--n-critic", type=int, default=5, help="critic steps per generator step")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--z-dim", type=int, default=64)
    # The penalties taken between real and fake samples: R1 (real only), R2 or DRAGAN would ignore one of them.
    between = sorted(name for name, preset in fastgp.presets.items() if preset.points == "interpolate")
    p.add_argument("--preset", default="wgan-gp", choices=between)
    p.add_argument("--amp", action="store_true", help="autocast (fp16 + GradScaler on CUDA, bf16 on CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=100)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    args = parse(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    G, D = generator(args.z_dim).to(device), critic().to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.0, 0.9))
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    # bf16 has float32's range, so only fp16 needs loss scaling.
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and amp_dtype == torch.float16)
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp)
    history: dict[str, list[float]] = {"d_loss": [], "gp": [], "g_loss": []}
    data = batches(args.batch_size, device)

    for step in range(args.steps):
        real = next(data)
        z = torch.randn(real.shape[0], args.z_dim, device=device)
        with autocast:
            # Under autocast G returns half-precision images; fastgp wants real and fake in one dtype.
            fake = G(z).detach().to(real.dtype)
            d_loss = fastgp.losses.d_loss("wgan", D(real), D(fake))
            gp = fastgp.gradient_penalty(D, real, fake, preset=args.preset, scaler=scaler)
        opt_d.zero_grad(set_to_none=True)
        scaler.scale(d_loss + gp).backward()
        scaler.step(opt_d)
        scaler.update()
        history["d_loss"].append(d_loss.item())
        history["gp"].append(gp.item())

        if step % args.n_critic == args.n_critic - 1 or step == args.steps - 1:
            with autocast:
                g_loss = fastgp.losses.g_loss("wgan", D(G(torch.randn_like(z))))
            opt_g.zero_grad(set_to_none=True)
            scaler.scale(g_loss).backward()
            scaler.step(opt_g)
            scaler.update()
            history["g_loss"].append(g_loss.item())

        if step % args.log_every == 0 or step == args.steps - 1:
            print(f"step {step:5d}  d_loss {d_loss.item():+.4f}  gp {gp.item():.4f}")
    assert all(math.isfinite(v) for v in history["gp"]), "the penalty diverged"
    return history


if __name__ == "__main__":
    main()
