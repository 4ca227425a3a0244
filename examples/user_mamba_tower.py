"""A user-written Mamba image classifier (no Hugging Face, no osf rule of its own) on CIFAR-10.

The model below is written the way small Mamba classifiers usually are: a patch-embedding
convolution, a stack of residual blocks (RMSNorm + a Mamba mixer in plain PyTorch: ``in_proj``
to ``[x | z]``, a depthwise causal ``conv1d``, ``x_proj`` to ``[dt | B | C]``, ``dt_proj``,
``A_log``, ``D``, a selective scan as a Python loop over positions, ``out_proj``), a final
norm, mean pooling and a linear head. osf finds its dims from the traced graph and the mixer's
parameter layout (the same structural rule that matches Hugging Face's ``MambaMixer``): the
model width, each mixer's ``d_inner``, ``d_state`` and ``dt_rank``, and the blocks that can be
dropped. The mixer reads its sizes from its own attributes (``self.d_inner``, ``self.d_state``,
``self.dt_rank``), which osf updates in a subnet. If the analysis were wrong, ``osf.supernet``
would stop with a ``VerificationError`` naming the dim (the largest config must reproduce the
model), and so would ``extract``; nothing here catches it.

Real data (CIFAR-10 python-pickle batches):

    python examples/user_mamba_tower.py --data ./cifar-10-batches-py --pretrain-steps 3000 \\
        --train-steps 1000 --trials 100 --out runs/tower

``--pretrain-steps`` trains the model itself first (plain cross-entropy, AdamW); then its
supernet is trained (``--train-steps``), searched by top-1 accuracy on the test images, and the
best subnet under ``--max-params-frac`` is extracted, saved, and loaded back with
``osf.load_subnet(folder, model=MambaTower(**tower_config))``.

Smoke test (offline, seconds): ``python examples/user_mamba_tower.py --smoke``.

Writes ``OUT/result.json`` (with the reload check), ``OUT/search`` and ``OUT/subnet``
(``model.safetensors``, ``osf_subnet.json`` and ``tower_config.json``).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import example_utils


# ------------------------------------------------------------------ the model
class RMSNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class MambaMixer(nn.Module):
    """Selective state-space mixer (Mamba), sequential scan in plain PyTorch."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | None = None):
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        length = hidden.shape[1]
        x, z = self.in_proj(hidden).split([self.d_inner, self.d_inner], dim=-1)
        x = F.silu(self.conv1d(x.transpose(1, 2))[:, :, :length].transpose(1, 2))
        delta, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(delta))
        y = self.selective_scan(x, delta, -torch.exp(self.A_log), B, C, self.D)
        return self.out_proj(y * F.silu(z))

    @staticmethod
    def selective_scan(u, delta, A, B, C, D):
        deltaA = torch.exp(torch.einsum("bld,dn->bldn", delta, A))
        deltaB_u = torch.einsum("bld,bln,bld->bldn", delta, B, u)
        h = torch.zeros(u.shape[0], u.shape[2], A.shape[1], dtype=u.dtype, device=u.device)
        ys = []
        for i in range(u.shape[1]):
            h = deltaA[:, i] * h + deltaB_u[:, i]
            ys.append(torch.einsum("bdn,bn->bd", h, C[:, i]))
        return torch.stack(ys, dim=1) + u * D


class ResidualBlock(nn.Module):
    def __init__(self, d_model: int, d_state: int):
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.mixer = MambaMixer(d_model, d_state=d_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))


class MambaTower(nn.Module):
    """Patches -> residual Mamba blocks -> mean pool -> classes."""

    def __init__(self, num_classes: int = 10, d_model: int = 128, n_layers: int = 6, patch_size: int = 4,
                 d_state: int = 16):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, d_model, patch_size, stride=patch_size)
        self.layers = nn.ModuleList(ResidualBlock(d_model, d_state) for _ in range(n_layers))
        self.norm_f = RMSNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm_f(x).mean(dim=1))


# ------------------------------------------------------------------- the run
def pretrain(model: nn.Module, data, steps: int, batch_size: int, lr: float, seed: int) -> float:
    """Plain supervised training (AdamW, cross-entropy); the validation accuracy after it."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    x, y = data.train["pixel_values"], data.train["labels"]
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(y), (min(batch_size, len(y)),), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        vx, vy = data.validation["pixel_values"], data.validation["labels"]
        preds = torch.cat([model(vx[i: i + 256]).argmax(-1) for i in range(0, len(vy), 256)])
    return float((preds == vy).float().mean())


def main(argv: list[str] | None = None) -> dict:
    p = example_utils.parser(__doc__, model="MambaTower (built here)", trials=50, train_steps=0)
    p.add_argument("--data", type=Path, help="folder of the CIFAR-10 python-pickle batches (not needed with --smoke)")
    p.add_argument("--pretrain-steps", type=int, default=3000, help="plain training steps of the model (default 3000)")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--patch-size", type=int, default=4)
    args, out = example_utils.start(p, argv, __file__)

    import osf
    from osf.search import ImageAccuracy

    if args.smoke:
        data_dir = example_utils.write_cifar(out / "data", "cifar10", n_train=80, n_test=24, seed=args.seed)
        tower = dict(num_classes=10, d_model=32, n_layers=4, patch_size=8, d_state=8)
        args.trials, args.pretrain_steps, args.train_steps = min(args.trials, 4), 5, min(args.train_steps, 2) or 2
    else:
        if args.data is None:
            p.error("--data DIR is required (the CIFAR-10 python-pickle batches), or use --smoke")
        data_dir = args.data
        tower = dict(num_classes=10, d_model=args.d_model, n_layers=args.layers, patch_size=args.patch_size, d_state=16)
    torch.manual_seed(args.seed)
    model = MambaTower(**tower).to(args.device)
    evaluator = ImageAccuracy(f"cifar10:{data_dir}", limit=args.limit, batch_size=args.batch_size)
    data = example_utils.normalise_like(osf.load_train_data(f"cifar10:{data_dir}", seed=args.seed), evaluator.mean, evaluator.std)
    if args.pretrain_steps:
        acc = pretrain(model, data, args.pretrain_steps, args.batch_size, lr=1e-3, seed=args.seed)
        print(f"pretrained {args.pretrain_steps} steps: validation accuracy {acc:.3f}")
    model.eval()
    sn = osf.supernet(model, example_inputs=evaluator.example_inputs().to(args.device), calibration=evaluator)
    print("dims found:", {name: choices[0] for name, choices in sn.space.dims.items()})
    if args.train_steps:
        print("supernet training, last validation:", example_utils.train_supernet(sn, data, args, out, lr=5e-4))
    check = evaluator.example_inputs().to(args.device)
    reload = {}

    def save_config_and_reload(sub: nn.Module, folder: Path) -> None:
        (folder / "tower_config.json").write_text(json.dumps(tower))
        again = osf.load_subnet(folder, model=MambaTower(**tower))
        with torch.no_grad():
            reload["reload_max_abs_diff"] = float((again.to(args.device)(check) - sub(check)).abs().max())

    summary = example_utils.search_and_extract(sn, evaluator, args, out, save=save_config_and_reload)
    summary.update(reload, dims=len(sn.space.dims), blocks=len(sn.ir.blocks))
    example_utils.write_result(out, summary)
    print(f"reloaded subnet: max |difference| {reload['reload_max_abs_diff']:.2e}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
