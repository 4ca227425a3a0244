"""Never a silent wrong model: a user's Mamba in the style of johnma2006/mamba-minimal, whose
mixer reads its sizes from a config object (``self.args.d_inner``) inside forward, is exact
(checked against a smaller mamba-minimal built from its own ModelArgs, weights copied by hand)
when each layer has its own args, and keeps those sizes whole when one ModelArgs serves every
layer; a model whose smaller configs crash is refused at build, naming the config and module."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import osf

# ranked on random inputs on purpose: the checks hold whatever the channel order
pytestmark = pytest.mark.filterwarnings("ignore::osf.elastic.importance.RandomInputsWarning")


# ------------------------------------------------------------ mamba-minimal (torch only, no einops)
@dataclass
class ModelArgs:
    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 16
    expand: int = 2
    dt_rank: int | str = "auto"
    d_conv: int = 4
    conv_bias: bool = True
    bias: bool = False
    d_inner: int | None = None

    def __post_init__(self):
        if self.d_inner is None:
            self.d_inner = int(self.expand * self.d_model)
        if self.dt_rank == "auto":
            self.dt_rank = math.ceil(self.d_model / 16)


class Mamba(nn.Module):
    """``per_layer``: each layer gets its own copy of ``args`` (else one ModelArgs serves all)."""

    def __init__(self, args: ModelArgs, per_layer: bool = False, block: type | None = None):
        super().__init__()
        self.args = args
        block = block or MambaBlock
        self.embedding = nn.Embedding(args.vocab_size, args.d_model)
        self.layers = nn.ModuleList([ResidualBlock(dataclasses.replace(args) if per_layer else args, block)
                                     for _ in range(args.n_layer)])
        self.norm_f = RMSNorm(args.d_model)
        self.lm_head = nn.Linear(args.d_model, args.vocab_size, bias=False)
        self.lm_head.weight = self.embedding.weight  # tied, as in mamba-minimal

    def forward(self, input_ids):
        x = self.embedding(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm_f(x))


class ResidualBlock(nn.Module):
    def __init__(self, args: ModelArgs, block: type):
        super().__init__()
        self.args = args
        self.mixer = block(args)
        self.norm = RMSNorm(args.d_model)

    def forward(self, x):
        return self.mixer(self.norm(x)) + x


class MambaBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.in_proj = nn.Linear(args.d_model, args.d_inner * 2, bias=args.bias)
        self.conv1d = nn.Conv1d(args.d_inner, args.d_inner, bias=args.conv_bias, kernel_size=args.d_conv,
                                groups=args.d_inner, padding=args.d_conv - 1)
        self.x_proj = nn.Linear(args.d_inner, args.dt_rank + args.d_state * 2, bias=False)
        self.dt_proj = nn.Linear(args.dt_rank, args.d_inner, bias=True)
        A = torch.arange(1, args.d_state + 1, dtype=torch.float32).repeat(args.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(args.d_inner))
        self.out_proj = nn.Linear(args.d_inner, args.d_model, bias=args.bias)

    def split_sizes(self) -> list[int]:
        return [self.args.d_inner, self.args.d_inner]

    def forward(self, x):
        (b, l, d) = x.shape
        x_and_res = self.in_proj(x)
        (x, res) = x_and_res.split(split_size=self.split_sizes(), dim=-1)
        x = x.transpose(1, 2)  # rearrange 'b l d_in -> b d_in l'
        x = self.conv1d(x)[:, :, :l]
        x = x.transpose(1, 2)
        x = F.silu(x)
        y = self.ssm(x)
        y = y * F.silu(res)
        return self.out_proj(y)

    def ssm(self, x):
        (d_in, n) = self.A_log.shape
        A = -torch.exp(self.A_log.float())
        D = self.D.float()
        x_dbl = self.x_proj(x)
        (delta, B, C) = x_dbl.split(split_size=[self.args.dt_rank, n, n], dim=-1)
        delta = F.softplus(self.dt_proj(delta))
        return self.selective_scan(x, delta, A, B, C, D)

    def selective_scan(self, u, delta, A, B, C, D):
        (b, l, d_in) = u.shape
        n = A.shape[1]
        deltaA = torch.exp(torch.einsum("bld,dn->bldn", delta, A))
        deltaB_u = torch.einsum("bld,bln,bld->bldn", delta, B, u)
        x = torch.zeros((b, d_in, n), device=deltaA.device)
        ys = []
        for i in range(l):
            x = deltaA[:, i] * x + deltaB_u[:, i]
            ys.append(torch.einsum("bdn,bn->bd", x, C[:, i, :]))
        y = torch.stack(ys, dim=1)
        return y + u * D


class ListSizedBlock(MambaBlock):
    """Keeps the split sizes in a list attribute: no size attribute osf can bind."""

    def __init__(self, args: ModelArgs):
        super().__init__(args)
        self.sizes = [args.d_inner, args.d_inner]

    def split_sizes(self) -> list[int]:
        return self.sizes


class RMSNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


ARGS = dict(d_model=32, n_layer=3, vocab_size=48, d_state=6, dt_rank=3, bias=True)


def make(per_layer: bool, block: type | None = None, seed: int = 0) -> Mamba:
    """A random mamba-minimal with every parameter perturbed (D, biases, norms, A_log included)."""
    torch.manual_seed(seed)
    model = Mamba(ModelArgs(**ARGS), per_layer=per_layer, block=block).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() == 1 else 0.1))
    return model


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, ARGS["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(seed))


def by_hand(full: dict[str, torch.Tensor], cfg: dict, n_layer: int) -> Mamba:
    """The subnet as a smaller mamba-minimal built from ModelArgs of its sizes, with the supernet's
    (reordered) full weights cut to each size's first channels by hand."""
    E, N, R = full["layers.0.mixer.A_log"].shape + full["layers.0.mixer.dt_proj.weight"].shape[1:]
    h = cfg.get("hidden", ARGS["d_model"])
    kept = [i for i in range(n_layer) if cfg.get(f"layers.{i}", True)]
    base = ModelArgs(**{**ARGS, "d_model": h, "n_layer": len(kept), "d_inner": E})
    ref = Mamba(base, per_layer=True).eval()
    sd = {"embedding.weight": full["embedding.weight"][:, :h], "norm_f.weight": full["norm_f.weight"][:h]}
    for j, i in enumerate(kept):
        k = cfg.get(f"layers.{i}.mixer:d_inner", E)
        n = cfg.get(f"layers.{i}.mixer:d_state", N)
        r = cfg.get(f"layers.{i}.mixer:dt_rank", R)
        ref.layers[j] = ResidualBlock(ModelArgs(**{**ARGS, "d_model": h, "d_inner": k, "d_state": n, "dt_rank": r}),
                                      MambaBlock)
        f = {name[len(f"layers.{i}."):]: t for name, t in full.items() if name.startswith(f"layers.{i}.")}
        xz = torch.cat([torch.arange(k), E + torch.arange(k)])
        dbc = torch.cat([torch.arange(r), R + torch.arange(n), R + N + torch.arange(n)])
        layer = {
            "norm.weight": f["norm.weight"][:h],
            "mixer.in_proj.weight": f["mixer.in_proj.weight"][xz][:, :h],
            "mixer.in_proj.bias": f["mixer.in_proj.bias"][xz],
            "mixer.conv1d.weight": f["mixer.conv1d.weight"][:k],
            "mixer.conv1d.bias": f["mixer.conv1d.bias"][:k],
            "mixer.x_proj.weight": f["mixer.x_proj.weight"][dbc][:, :k],
            "mixer.dt_proj.weight": f["mixer.dt_proj.weight"][:k, :r],
            "mixer.dt_proj.bias": f["mixer.dt_proj.bias"][:k],
            "mixer.A_log": f["mixer.A_log"][:k, :n],
            "mixer.D": f["mixer.D"][:k],
            "mixer.out_proj.weight": f["mixer.out_proj.weight"][:h, :k],
            "mixer.out_proj.bias": f["mixer.out_proj.bias"][:h],
        }
        sd.update({f"layers.{j}.{key}": t for key, t in layer.items()})
    sd["lm_head.weight"] = sd["embedding.weight"]
    ref.load_state_dict(sd, strict=True)
    return ref


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def configs(sn) -> list[dict]:
    """The smallest config, mixed sizes per layer with a dropped layer, and sampled ones."""
    largest = sn.space.largest()
    mixed = dict(largest)
    for d, choices in sn.space.dims.items():
        mixed[d] = choices[len(choices) // 2] if "layers.1" in d else choices[0] if "layers.0" in d else mixed[d]
    mixed["layers.2"] = False
    return [sn.space.smallest(), sn.space.validate(mixed)] + [sn.space.sample(s) for s in range(3)]


@pytest.mark.parametrize("per_layer", [True, False], ids=["args-per-layer", "args-shared"])
def test_mamba_minimal_subnets_equal_a_smaller_mamba_minimal_built_by_hand(per_layer):
    model = make(per_layer)
    x = ids()
    with torch.no_grad():
        want_full = model(x)
    sn = osf.supernet(model, example_inputs=(x,))
    mixer_dims = [d for d in sn.space.dims if ":" in d]
    if per_layer:  # each mixer's own args hold its sizes: they are bound and set per config
        assert {d.split(":")[1] for d in mixer_dims} == {"d_inner", "d_state", "dt_rank"}
        assert {(a.module, a.attr) for a in sn.ir.attrs} >= {(f"layers.{i}.mixer", "args.d_inner") for i in range(3)}
    else:  # one ModelArgs for every layer cannot hold a size per layer: those sizes stay whole
        assert mixer_dims == []
    assert "hidden" in sn.space.dims
    with torch.no_grad():
        assert rel_err(sn.model(x), want_full) < 1e-5
        full = {k: v.detach().clone() for k, v in sn.model.state_dict().items()}
    checked = 0
    for cfg in configs(sn):
        ref = by_hand(full, cfg, ARGS["n_layer"])
        with torch.no_grad():
            want = ref(x)
            with sn.use(cfg):
                got = sn.model(x)
            sub = sn.extract(cfg)
            got_sub = sub(x)
        assert got.shape == want.shape == want_full.shape
        assert rel_err(got, want) < 1e-5, cfg
        assert rel_err(got_sub, want) < 1e-5, cfg
        assert sum(p.numel() for p in sub.parameters()) == sum(p.numel() for p in ref.parameters())
        checked += cfg != sn.space.largest()
    assert checked >= 4
    # the supernet still computes the original model at its largest config
    with torch.no_grad():
        assert rel_err(sn.model(x), want_full) < 1e-5


def test_a_mamba_minimal_subnet_with_sizes_in_its_args_saves_and_loads(tmp_path):
    model = make(per_layer=True)
    x = ids()
    sn = osf.supernet(model, example_inputs=(x,))
    cfg = sn.space.sample(4)
    sub = sn.extract(cfg)
    osf.save_subnet(sub, tmp_path / "sub")
    loaded = osf.load_subnet(tmp_path / "sub", model=make(per_layer=True, seed=7))
    # the loaded layers' own args hold the subnet's sizes (a dotted size attribute: args.d_inner)
    assert [layer.mixer.args.d_inner for layer in loaded.layers] == [layer.mixer.args.d_inner for layer in sub.layers]
    with torch.no_grad():
        assert rel_err(loaded(x), sub(x)) < 1e-6


def test_a_model_whose_smallest_config_crashes_is_refused_at_build_naming_config_and_module():
    model = make(per_layer=True, block=ListSizedBlock)
    with pytest.raises(osf.VerificationError) as e:
        osf.supernet(model, example_inputs=(ids(),))
    msg = str(e.value)
    assert "\n" not in msg
    assert "smallest config fails on the example inputs" in msg
    assert "in module 'layers.0.mixer' (ListSizedBlock)" in msg
    assert "split_with_sizes" in msg
    assert "'layers.0.mixer:d_inner'" in msg  # the config is named
    assert "space=" in msg and "verify=False" in msg


def test_the_corner_check_is_skipped_with_verify_false_and_passes_when_the_dims_are_pinned():
    model = make(per_layer=True, block=ListSizedBlock)
    osf.supernet(model, example_inputs=(ids(),), verify=False)  # builds: the user asked for no checks
    model = make(per_layer=True, block=ListSizedBlock)
    pinned = {f"layers.{i}.mixer:d_inner": [2 * ARGS["d_model"]] for i in range(ARGS["n_layer"])}
    sn = osf.supernet(model, example_inputs=(ids(),), space=pinned)
    with torch.no_grad(), sn.use(sn.space.smallest()):
        assert torch.isfinite(sn.model(ids())).all()


# ------------------------------------------------ sizes from a config object in traced code
@dataclass
class GLUArgs:
    d: int = 16
    h: int = 24


class GLU(nn.Module):
    """A gated MLP whose forward cuts its fused projection with sizes from ``self.args``."""

    def __init__(self, args: GLUArgs, how: str):
        super().__init__()
        self.args, self.how = args, how
        self.norm = nn.LayerNorm(args.d)
        self.fc1 = nn.Linear(args.d, 2 * args.h)
        self.fc2 = nn.Linear(args.h, args.d)

    def forward(self, x):
        h, n = self.fc1(self.norm(x)), self.args.h
        if self.how == "split":
            u, g = h.split([n, n], dim=-1)
        elif self.how == "split_keyword":
            u, g = torch.split(h, split_size_or_sections=[n, n], dim=-1)
        elif self.how == "split_int":
            u, g = h.split(n, dim=-1)
        else:
            u, g = h.narrow(-1, 0, n), h.narrow(-1, n, n)
        return x + self.fc2(u * F.silu(g))


class GLUNet(nn.Module):
    def __init__(self, args: GLUArgs, how: str, per_layer: bool, n_layer: int = 2):
        super().__init__()
        self.embed = nn.Embedding(20, args.d)
        self.layers = nn.ModuleList([GLU(dataclasses.replace(args) if per_layer else args, how)
                                     for _ in range(n_layer)])
        self.head = nn.Linear(args.d, 20)

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


@pytest.mark.parametrize("per_layer", [True, False], ids=["args-per-layer", "args-shared"])
@pytest.mark.parametrize("how", ["split", "split_keyword", "split_int", "narrow"])
def test_split_sizes_from_a_config_object_keep_the_width_whole_and_subnets_are_exact(how, per_layer):
    torch.manual_seed(0)
    model = GLUNet(GLUArgs(), how, per_layer).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(3))
    sn = osf.supernet(model, example_inputs=(x,))
    # the numbers in the split are the same whatever the input: the GLU width stays whole
    assert list(sn.space.dims) == ["hidden"]
    full = {k: v.detach().clone() for k, v in sn.model.state_dict().items()}
    for cfg in [sn.space.smallest()] + [sn.space.sample(s) for s in range(3)]:
        d = cfg["hidden"]
        kept = [i for i in range(2) if cfg.get(f"layers.{i}", True)]
        ref = GLUNet(GLUArgs(d=d), how, per_layer=True, n_layer=len(kept)).eval()
        sd = {"embed.weight": full["embed.weight"][:, :d], "head.weight": full["head.weight"][:, :d],
              "head.bias": full["head.bias"]}
        for j, i in enumerate(kept):
            f = lambda k: full[f"layers.{i}.{k}"]  # noqa: E731
            sd.update({f"layers.{j}.norm.weight": f("norm.weight")[:d], f"layers.{j}.norm.bias": f("norm.bias")[:d],
                       f"layers.{j}.fc1.weight": f("fc1.weight")[:, :d], f"layers.{j}.fc1.bias": f("fc1.bias"),
                       f"layers.{j}.fc2.weight": f("fc2.weight")[:d], f"layers.{j}.fc2.bias": f("fc2.bias")[:d]})
        ref.load_state_dict(sd, strict=True)
        with torch.no_grad(), sn.use(cfg):
            assert rel_err(sn.model(x), ref(x)) < 1e-5, cfg
