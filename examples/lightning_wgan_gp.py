"""WGAN-GP in PyTorch Lightning, with manual optimisation and fastgp's penalty.

A GAN alternates two optimisers, so the module turns automatic optimisation off and steps them
itself; the penalty is one call in the critic step. `self.manual_backward` is a plain `.backward()`
(plus the precision plugin's scaling), so the double backward needs nothing special. Random
CIFAR-shaped images stand in for a data set; `python examples/lightning_wgan_gp.py --steps 5`.
Needs `pip install lightning`.
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset
from wgan_gp import critic, generator  # the same networks as the plain PyTorch example

import fastgp


class WGANGP(L.LightningModule):
    def __init__(self, z_dim: int = 64, n_critic: int = 5, preset: str = "wgan-gp", lr: float = 1e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False  # two optimisers, stepped by hand
        self.G, self.D = generator(z_dim), critic()
        self.history: dict[str, list[float]] = {"d_loss": [], "gp": [], "g_loss": []}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = (0.0, 0.9)
        return [
            torch.optim.Adam(self.D.parameters(), lr=self.hparams.lr, betas=betas),
            torch.optim.Adam(self.G.parameters(), lr=self.hparams.lr, betas=betas),
        ]

    def training_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> None:
        (real,) = batch
        opt_d, opt_g = self.optimizers()
        z = torch.randn(real.shape[0], self.hparams.z_dim, device=real.device)

        fake = self.G(z).detach()
        d_loss = fastgp.losses.d_loss("wgan", self.D(real), self.D(fake))
        gp = fastgp.gradient_penalty(self.D, real, fake, preset=self.hparams.preset)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss + gp)
        opt_d.step()
        self.history["d_loss"].append(d_loss.item())
        self.history["gp"].append(gp.item())
        self.log_dict({"d_loss": d_loss, "gp": gp}, prog_bar=True)

        if batch_idx % self.hparams.n_critic == self.hparams.n_critic - 1:
            g_loss = fastgp.losses.g_loss("wgan", self.D(self.G(torch.randn_like(z))))
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(g_loss)
            opt_g.step()
            self.history["g_loss"].append(g_loss.item())
            self.log("g_loss", g_loss, prog_bar=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000, help="critic steps (batches)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-critic", type=int, default=5)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> WGANGP:
    args = parse(argv)
    L.seed_everything(args.seed, verbose=False)
    data = TensorDataset(torch.rand(args.steps * args.batch_size, 3, 32, 32) * 2 - 1)
    model = WGANGP(n_critic=args.n_critic)
    trainer = L.Trainer(
        max_steps=args.steps * 2,  # Lightning counts every optimiser step; the generator's included
        max_epochs=1,
        accelerator=args.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, DataLoader(data, batch_size=args.batch_size))
    return model


if __name__ == "__main__":
    main()
