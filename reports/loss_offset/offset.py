"""suggest() with a constant added to the loss (which changes no gradient), on two small
regressions: an MLP under MSE and a deep ReLU net under a Gaussian negative log-likelihood
with a learned variance (its loss goes below 0). Prints the pick and the confidence per
constant. Run from the repository root: python reports/loss_offset/offset.py"""

import warnings

import torch
import torch.nn.functional as F
from torch import nn

import autowarm

warnings.simplefilter("ignore")
torch.set_num_threads(1)
OFFSETS = (-100.0, -10.0, -1.0, 0.0, 1.0, 10.0, 100.0)


class Heteroscedastic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        body = [m for _ in range(6) for m in (nn.Linear(32, 32), nn.ReLU())]
        self.net = nn.Sequential(nn.Linear(8, 32), *body, nn.Linear(32, 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x)
        return out[:, :1], out[:, 1:]


def gaussian_nll(out: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    mu, log_var = out
    return (0.5 * (log_var + (y - mu) ** 2 / log_var.exp())).mean()


def main() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 8, generator=g)
    w = torch.randn(8, 1, generator=g)
    cases = {
        "mlp_mse": (
            [(x[i : i + 32], x[i : i + 32] @ w) for i in range(0, 512, 32)],
            lambda: nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)),
            F.mse_loss,
            2000,
        ),
        "deep_relu_gaussian_nll": (
            [(x[i : i + 64], torch.tanh(x[i : i + 64] @ w)) for i in range(0, 1024, 64)],
            Heteroscedastic,
            gaussian_nll,
            3000,
        ),
    }
    print("case offset peak_lr warmup_steps confidence")
    for name, (data, make, loss, total) in cases.items():
        for off in OFFSETS:
            torch.manual_seed(1)
            model = make()
            s = autowarm.suggest(
                model, data, criterion=lambda o, y, c=off, f=loss: f(o, y) + c,
                total_steps=total, progress=False,
            )  # fmt: skip
            print(name, off, f"{s.peak_lr:.6g}", s.warmup_steps, s.confidence, flush=True)


if __name__ == "__main__":
    main()
