"""Every model the IR supports, tiny, with example inputs. Shared by the tests and benchmarks."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from osf.models import BUILTIN


# --------------------------------------------------------------------- user models
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 24), nn.GELU(), nn.Linear(24, 5))

    def forward(self, x):
        return self.net(x)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNetish(nn.Module):
    def __init__(self, num_classes: int = 7):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class GPTBlock(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.proj = nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q = q.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        k = k.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        v = v.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        mask = torch.tril(torch.ones(t, t, device=x.device, dtype=torch.bool))
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(b, t, c)
        x = x + self.c_proj(y)
        return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 50, d: int = 32, n_head: int = 4, n_layer: int = 2, max_len: int = 16):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(max_len, d)
        self.h = nn.ModuleList(GPTBlock(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied

    def forward(self, idx):
        pos = torch.arange(0, idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class UserMixer(nn.Module):
    """A user's own Mamba mixer: HF parameter names, its own (sequential) forward."""

    def __init__(self, d_model: int, d_inner: int, d_state: int, dt_rank: int, d_conv: int = 3):
        super().__init__()
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, dt_rank
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1).float()).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, h):
        L = h.shape[1]
        x, z = self.in_proj(h).chunk(2, dim=-1)
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :L]).transpose(1, 2)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))
        A = -torch.exp(self.A_log)
        state = torch.zeros(h.shape[0], self.d_inner, self.d_state)
        ys = []
        for t in range(L):
            state = torch.exp(dt[:, t, :, None] * A) * state + dt[:, t, :, None] * B[:, t, None, :] * x[:, t, :, None]
            ys.append((state * C[:, t, None, :]).sum(-1) + self.D * x[:, t])
        y = torch.stack(ys, 1) * F.silu(z)
        return self.out_proj(y)


class MixerBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mixer = UserMixer(d, 2 * d, 4, 4)

    def forward(self, x):
        return x + self.mixer(self.norm(x))


class PatchMambaClassifier(nn.Module):
    """Classifies images as sequences of patches with stacked Mamba-mixer blocks."""

    def __init__(self, d: int = 24, patch: int = 4, n_layer: int = 2, num_classes: int = 6):
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(3 * patch * patch, d)
        self.layers = nn.ModuleList(MixerBlock(d) for _ in range(n_layer))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes)

    def forward(self, img):
        b, c, h, w = img.shape
        p = self.patch
        x = img.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * p * p)
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).mean(1))


# ------------------------------------------------------------------------ the zoo
def build(name: str, seed: int = 0):
    """(model, example_inputs or None for HF defaults)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    if name in BUILTIN:
        return BUILTIN[name]().eval(), None
    if name == "mlp":
        return MLP().eval(), torch.randn(3, 12, generator=g)
    if name == "resnet":
        m = ResNetish()
        for mod in m.modules():  # non-trivial running statistics
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 1.5)
        return m.eval(), torch.randn(2, 3, 16, 16, generator=g)
    if name == "gpt":
        return TinyGPT().eval(), torch.randint(0, 50, (2, 10), generator=g)
    if name == "patch-mamba":
        return PatchMambaClassifier().eval(), torch.randn(2, 3, 16, 16, generator=g)
    raise KeyError(name)


HF_MODELS = ["tiny-mamba", "tiny-mamba2", "tiny-vit", "tiny-swin", "tiny-swinv2", "tiny-clip"]
USER_MODELS = ["mlp", "resnet", "gpt", "patch-mamba"]
ALL_MODELS = HF_MODELS + USER_MODELS


# ------------------------------------------------------------- families (issue 12)
# Tiny random-init models of every family OSF is tried on: Hugging Face classes built from
# their configs (nothing downloaded) and users' own modules written without HF classes.
# ``FAMILIES[name] = (family, builder)``; a builder returns (model, example inputs or None).
def _ids(vocab: int, batch: int = 2, length: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _img(c: int = 3, size: int = 32, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, c, size, size, generator=torch.Generator().manual_seed(seed))


def _hf(cls_name: str, cfg_name: str, inputs=None, **cfg):
    import transformers

    config = getattr(transformers, cfg_name)(**cfg)
    return getattr(transformers, cls_name)(config).eval(), inputs


_LM = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
           max_position_embeddings=64)


def _lm(cls: str, cfg: str, **over):
    kw = {**_LM, **over}
    return lambda: _hf(cls, cfg, {"input_ids": _ids(kw.get("vocab_size", 96))}, **kw)


class FusedExperts(nn.Module):
    """A user's mixture of experts: expert weights fused as (experts, out, in) parameters."""

    def __init__(self, d: int, ffn: int, n_experts: int, top_k: int = 2):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(d, n_experts, bias=False)
        self.w_in = nn.Parameter(torch.randn(n_experts, ffn, d) / d ** 0.5)
        self.w_out = nn.Parameter(torch.randn(n_experts, d, ffn) / ffn ** 0.5)

    def forward(self, x):
        b, t, d = x.shape
        flat = x.reshape(-1, d)
        probs = self.router(flat).softmax(-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        out = torch.zeros_like(flat)
        for e in range(self.w_in.shape[0]):
            rows, slot = torch.where(chosen == e)
            if rows.numel() == 0:
                continue
            h = F.gelu(flat[rows] @ self.w_in[e].t()) @ self.w_out[e].t()
            out.index_add_(0, rows, h * weights[rows, slot, None])
        return out.reshape(b, t, d)


class MoEBlock(nn.Module):
    def __init__(self, d: int, n_experts: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.moe = FusedExperts(d, 2 * d, n_experts)

    def forward(self, x):
        return x + self.moe(self.norm(x))


class AlibiAttentionBlock(nn.Module):
    """A user's ALiBi attention: scores formed by ``torch.baddbmm(alibi, q, k^T)``."""

    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head, self.hd = n_head, d // n_head
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.register_buffer("slopes", 2.0 ** (-8.0 * (torch.arange(n_head) + 1) / n_head), persistent=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, t, 3, self.n_head, self.hd).permute(2, 0, 3, 1, 4)
        pos = torch.arange(t, dtype=x.dtype)
        alibi = (self.slopes[:, None] * pos[None, :])[None].expand(b, -1, -1).reshape(b * self.n_head, 1, t)
        scores = torch.baddbmm(alibi, q.reshape(b * self.n_head, t, self.hd),
                               k.reshape(b * self.n_head, t, self.hd).transpose(1, 2), beta=1.0,
                               alpha=self.hd ** -0.5)
        att = scores.softmax(-1)
        y = torch.bmm(att, v.reshape(b * self.n_head, t, self.hd)).view(b, self.n_head, t, self.hd)
        return x + self.out(y.transpose(1, 2).reshape(b, t, d))


class HybridLM(nn.Module):
    """A user's hybrid stack: Mamba mixers, ALiBi attention and fused-expert MoE layers."""

    def __init__(self, vocab: int = 60, d: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([MixerBlock(d), AlibiAttentionBlock(d, 4), MoEBlock(d), MixerBlock(d),
                                     AlibiAttentionBlock(d, 4), MoEBlock(d)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


class MoELM(nn.Module):
    def __init__(self, vocab: int = 60, d: int = 32, n_layer: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(MoEBlock(d) for _ in range(n_layer))
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


class ScaledProjection(nn.Module):
    """A user's fused projection with a per-channel multiplier buffer (muP style)."""

    def __init__(self, d: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(d, 2 * inner, bias=False)
        self.register_buffer("multiplier", torch.linspace(0.5, 1.5, 2 * inner))
        self.out = nn.Linear(inner, d)

    def forward(self, x):
        a, g = (self.proj(x) * self.multiplier).chunk(2, dim=-1)
        return x + self.out(a * torch.sigmoid(g))


class MupNet(nn.Module):
    def __init__(self, d: int = 24):
        super().__init__()
        self.inp = nn.Linear(10, d)
        self.layers = nn.Sequential(ScaledProjection(d, 2 * d), ScaledProjection(d, 2 * d))
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        return self.head(self.layers(self.inp(x)))


class ConvNeXtBlock(nn.Module):
    """A user's ConvNeXt block: depthwise conv, channels-last norm and MLP, layer scale."""

    def __init__(self, c: int):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1 = nn.Linear(c, 4 * c)
        self.pw2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class TinyConvNeXt(nn.Module):
    def __init__(self, c: int = 16, n_classes: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, 4)
        self.blocks = nn.Sequential(ConvNeXtBlock(c), ConvNeXtBlock(c))
        self.head = nn.Linear(c, n_classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class TypedLayer(nn.Module):
    """A layer whose parent reads its ``kind`` attribute to pick a mask."""

    def __init__(self, d: int, kind: str):
        super().__init__()
        self.kind = kind
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)

    def forward(self, x, scale):
        return x + scale * self.fc2(F.gelu(self.fc1(self.norm(x))))


class TypedStack(nn.Module):
    def __init__(self, d: int = 16):
        super().__init__()
        self.inp = nn.Linear(6, d)
        self.layers = nn.ModuleList(TypedLayer(d, k) for k in ("a", "b", "a", "b"))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = self.inp(x)
        for layer in self.layers:
            h = layer(h, 1.0 if layer.kind == "a" else 0.5)
        return self.head(h)


class ChannelCheckedNet(nn.Module):
    """A user's model that checks its input against ``self.in_channels``."""

    def __init__(self, c_in: int = 3, c: int = 16):
        super().__init__()
        self.in_channels = c_in
        self.conv = nn.Conv2d(c_in, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.head = nn.Linear(c, 4)

    def forward(self, x):
        if x.shape[1] != self.in_channels:
            raise ValueError("wrong number of input channels")
        return self.head(F.relu(self.conv2(F.relu(self.conv(x)))).mean((2, 3)))


class FoldedPatchAttention(nn.Module):
    """A user's MobileViT-like block: conv, unfold into patches, attention, fold back."""

    def __init__(self, c: int, patch: int = 2):
        super().__init__()
        self.p = patch
        self.local = nn.Conv2d(c, c, 3, padding=1)
        self.norm = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.fuse = nn.Conv2d(2 * c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.p
        y = self.local(x)
        t = y.reshape(b, c, h // p, p, w // p, p).permute(0, 3, 5, 2, 4, 1).reshape(b * p * p, -1, c)
        q, k, v = self.qkv(self.norm(t)).chunk(3, dim=-1)
        t = t + self.proj(F.scaled_dot_product_attention(q, k, v))
        y = t.reshape(b, p, p, h // p, w // p, c).permute(0, 5, 3, 1, 4, 2).reshape(b, c, h, w)
        return self.fuse(torch.cat([x, y], 1))


class TinyMobileViT(nn.Module):
    def __init__(self, c: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, 2, 1)
        self.block = FoldedPatchAttention(c)
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        return self.head(self.block(F.silu(self.stem(x))).mean((2, 3)))


class TinySeq2Seq(nn.Module):
    """A user's encoder-decoder with cross-attention (nn.MultiheadAttention-free)."""

    def __init__(self, vocab: int = 40, d: int = 32, n_head: int = 4):
        super().__init__()
        self.n_head = n_head
        self.embed = nn.Embedding(vocab, d)
        self.enc = GPTBlock(d, n_head)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.o = nn.Linear(d, d)
        self.dec_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, src, tgt):
        mem = self.enc(self.embed(src))
        x = self.embed(tgt)
        b, t, d = x.shape
        hd = d // self.n_head
        q = self.q(self.dec_norm(x)).view(b, t, self.n_head, hd).transpose(1, 2)
        k, v = (z.view(b, -1, self.n_head, hd).transpose(1, 2) for z in self.kv(mem).chunk(2, -1))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        return self.head(x + self.o(y))


class TwoTower(nn.Module):
    """A user's two-tower model: text and image encoders projected into one space."""

    def __init__(self, vocab: int = 40, d: int = 32):
        super().__init__()
        self.text = nn.Sequential(nn.Embedding(vocab, d), GPTBlock(d, 4))
        self.image = PatchMambaClassifier(d=24, num_classes=16)
        self.text_proj = nn.Linear(d, 16, bias=False)

    def forward(self, ids, img):
        t = F.normalize(self.text_proj(self.text(ids).mean(1)), dim=-1)
        i = F.normalize(self.image(img), dim=-1)
        return t @ i.t()


class SpeechEncoder(nn.Module):
    """A user's speech encoder: strided 1-D convs over a waveform, then a transformer block."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.feat = nn.Sequential(nn.Conv1d(1, 16, 10, 5), nn.GELU(), nn.Conv1d(16, 16, 3, 2), nn.GELU())
        self.proj = nn.Linear(16, d)
        self.block = GPTBlock(d, 4)
        self.head = nn.Linear(d, 8)

    def forward(self, wav):
        x = self.feat(wav[:, None]).transpose(1, 2)
        return self.head(self.block(self.proj(x)))


class RelPosBiasAttention(nn.Module):
    """A user's T5-like attention: relative-position buckets from Python math, a bias table."""

    def __init__(self, d: int = 32, n_head: int = 4, buckets: int = 8):
        super().__init__()
        self.n_head, self.buckets = n_head, buckets
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.rel = nn.Embedding(buckets, n_head)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        b, t, d = x.shape
        pos = torch.arange(t)
        rel = (pos[None, :] - pos[:, None]).abs()
        bucket = torch.where(rel < self.buckets // 2, rel,
                             self.buckets // 2 + (torch.log(rel.float().clamp_min(1) / (self.buckets // 2))
                                                  / math.log(4) * (self.buckets // 2)).long().clamp_max(
                                 self.buckets // 2 - 1))
        bias = self.rel(bucket).permute(2, 0, 1)[None]
        q, k, v = (z.view(b, t, self.n_head, -1).transpose(1, 2) for z in self.qkv(self.norm(x)).chunk(3, -1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return x + self.o(y.transpose(1, 2).reshape(b, t, d))


class RelPosLM(nn.Module):
    def __init__(self, vocab: int = 40, d: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([RelPosBiasAttention(d), RelPosBiasAttention(d)])
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


class MaskUnitLayer(nn.Module):
    """A user's Hiera-like layer: attention inside mask units (tokens regrouped by a reshape and
    permute), query max-pooling through ``.max(dim=1).values`` when it widens the stream, and a
    branch on ``self.dim != self.dim_out``."""

    def __init__(self, dim: int, dim_out: int, heads: int, unit: int, pool: int):
        super().__init__()
        self.dim, self.dim_out, self.heads, self.unit, self.pool = dim, dim_out, heads, unit, pool
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.out = nn.Linear(dim_out, dim_out)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x):
        b, n, _ = x.shape
        h = self.norm(x)
        if self.dim != self.dim_out:
            x = self.proj(h).view(b, self.pool, -1, self.dim_out).max(dim=1).values
        units = n // self.unit
        qkv = self.qkv(h).reshape(b, self.unit, units, 3, self.heads, -1).permute(3, 0, 4, 2, 1, 5)
        q, k, v = qkv.unbind(0)
        if self.dim != self.dim_out:
            q = q.view(b, self.heads, units, self.pool, -1, q.shape[-1]).max(dim=3).values
        y = F.scaled_dot_product_attention(q, k, v)  # (b, heads, units, tokens per unit, head_dim)
        y = y.permute(0, 3, 2, 1, 4).reshape(b, -1, self.dim_out)
        return x + self.out(y)


class TinyHiera(nn.Module):
    def __init__(self, c: int = 8):
        super().__init__()
        self.embed = nn.Conv2d(3, c, 2, 2)
        self.layers = nn.Sequential(MaskUnitLayer(c, c, 2, 4, 2), MaskUnitLayer(c, c, 2, 4, 2),
                                    MaskUnitLayer(c, 2 * c, 2, 4, 2))
        self.head = nn.Linear(2 * c, 5)

    def forward(self, img):
        x = self.embed(img).flatten(2).transpose(1, 2)
        return self.head(self.layers(x).mean(1))


def _user(cls, inputs):
    return lambda: (cls().eval(), inputs())


def _t5():
    m, _ = _hf("T5ForConditionalGeneration", "T5Config", vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2,
               num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0)
    return m, {"input_ids": _ids(96), "decoder_input_ids": _ids(96, length=5, seed=1)}


def _bart():
    m, _ = _hf("BartForConditionalGeneration", "BartConfig", vocab_size=96, d_model=32, encoder_layers=2,
               decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
               decoder_ffn_dim=64, max_position_embeddings=64)
    return m, {"input_ids": _ids(96), "decoder_input_ids": _ids(96, length=5, seed=1)}


def _whisper():
    m, _ = _hf("WhisperForConditionalGeneration", "WhisperConfig", vocab_size=96, d_model=32, encoder_layers=2,
               decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
               decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=16, max_target_positions=32,
               decoder_start_token_id=1, pad_token_id=0, eos_token_id=2, bos_token_id=1)
    feats = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(0))
    return m, {"input_features": feats, "decoder_input_ids": _ids(96, length=5, seed=1)}


def _wav2vec2():
    m, _ = _hf("Wav2Vec2ForCTC", "Wav2Vec2Config", vocab_size=20, hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2),
               conv_kernel=(10, 3), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
               do_stable_layer_norm=True, feat_extract_norm="layer")
    return m, {"input_values": torch.randn(2, 400, generator=torch.Generator().manual_seed(0))}


def _siglip():
    m, _ = _hf("SiglipModel", "SiglipConfig",
               text_config=dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=16),
               vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=32, patch_size=8))
    return m, {"input_ids": _ids(96), "pixel_values": _img()}


def _vision(cls: str, cfg: str, size: int = 32, **kw):
    return lambda: _hf(cls, cfg, {"pixel_values": _img(size=size)}, **kw)


FAMILIES: dict[str, tuple[str, object]] = {
    # decoder-only LMs
    "llama": ("decoder LM (GQA, RoPE)", _lm("LlamaForCausalLM", "LlamaConfig", num_key_value_heads=2)),
    "mistral": ("decoder LM (GQA, RoPE)", _lm("MistralForCausalLM", "MistralConfig", num_key_value_heads=2)),
    "qwen2": ("decoder LM (GQA, qkv bias)", _lm("Qwen2ForCausalLM", "Qwen2Config", num_key_value_heads=2)),
    "gemma": ("decoder LM (GQA, RoPE)", _lm("GemmaForCausalLM", "GemmaConfig", num_key_value_heads=2, head_dim=8)),
    "phi3": ("decoder LM (fused qkv, fused gate/up)", _lm("Phi3ForCausalLM", "Phi3Config", num_key_value_heads=2,
                                                           pad_token_id=0)),
    "gpt2": ("decoder LM (Conv1D projections)", lambda: _hf("GPT2LMHeadModel", "GPT2Config", {"input_ids": _ids(96)},
                                                            vocab_size=96, n_embd=32, n_layer=2, n_head=4,
                                                            n_positions=64)),
    "gpt-neox": ("decoder LM (parallel residual)", _lm("GPTNeoXForCausalLM", "GPTNeoXConfig")),
    "opt": ("decoder LM (learned positions)", lambda: _hf("OPTForCausalLM", "OPTConfig", {"input_ids": _ids(96)},
                                                         vocab_size=96, hidden_size=32, ffn_dim=64,
                                                         num_hidden_layers=2, num_attention_heads=4,
                                                         word_embed_proj_dim=32, max_position_embeddings=64)),
    "bloom": ("decoder LM (ALiBi, baddbmm)", lambda: _hf("BloomForCausalLM", "BloomConfig", {"input_ids": _ids(96)},
                                                        vocab_size=96, hidden_size=32, n_layer=2, n_head=4)),
    "falcon": ("decoder LM (ALiBi / parallel attn)", lambda: _hf("FalconForCausalLM", "FalconConfig",
                                                                {"input_ids": _ids(96)}, vocab_size=96, hidden_size=32,
                                                                num_hidden_layers=2, num_attention_heads=4,
                                                                alibi=True, new_decoder_architecture=False,
                                                                multi_query=False)),
    # mixture of experts
    "mixtral": ("MoE (fused 3-D experts, router)", _lm("MixtralForCausalLM", "MixtralConfig", num_key_value_heads=2,
                                                       num_local_experts=4, num_experts_per_tok=2)),
    "qwen3-moe": ("MoE (fused 3-D experts, router)", _lm("Qwen3MoeForCausalLM", "Qwen3MoeConfig",
                                                         num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                                                         moe_intermediate_size=32, head_dim=8)),
    "user-moe": ("MoE (fused 3-D experts, router)", _user(MoELM, lambda: _ids(60))),
    # hybrids
    "jamba": ("hybrid Mamba + attention + MoE", _lm("JambaForCausalLM", "JambaConfig", num_hidden_layers=4,
                                                    num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                                                    expert_layer_period=2, expert_layer_offset=1,
                                                    attn_layer_period=2, attn_layer_offset=1, mamba_d_state=8,
                                                    mamba_dt_rank=4, use_mamba_kernels=False)),
    "falcon-h1": ("hybrid Mamba2 + attention (mup multipliers)", _lm(
        "FalconH1ForCausalLM", "FalconH1Config", num_key_value_heads=2, mamba_d_ssm=32, mamba_n_heads=4,
        mamba_d_head=8, mamba_d_state=8, mamba_chunk_size=8, head_dim=8)),
    "user-hybrid": ("hybrid Mamba + attention + MoE", _user(HybridLM, lambda: _ids(60))),
    "user-mup": ("per-channel multiplier buffer", _user(MupNet, lambda: torch.randn(
        3, 10, generator=torch.Generator().manual_seed(0)))),
    # state-space models
    "mamba": ("SSM (Mamba)", lambda: (BUILTIN["tiny-mamba"]().eval(), None)),
    "mamba2": ("SSM (Mamba2)", lambda: (BUILTIN["tiny-mamba2"]().eval(), None)),
    "user-patch-mamba": ("SSM (Mamba)", lambda: build("patch-mamba")),
    # encoders
    "bert": ("text encoder", _lm("BertForMaskedLM", "BertConfig")),
    "roberta": ("text encoder", _lm("RobertaForMaskedLM", "RobertaConfig", pad_token_id=1)),
    "distilbert": ("text encoder", lambda: _hf("DistilBertForMaskedLM", "DistilBertConfig", {"input_ids": _ids(96)},
                                               vocab_size=96, dim=32, hidden_dim=64, n_layers=2, n_heads=4,
                                               max_position_embeddings=64)),
    "modernbert": ("text encoder (layer-typed attention)", _lm("ModernBertForMaskedLM", "ModernBertConfig",
                                                               num_hidden_layers=3, pad_token_id=0,
                                                               global_attn_every_n_layers=2, local_attention=4)),
    "user-typed-layers": ("parent reads a layer attribute", _user(TypedStack, lambda: torch.randn(
        3, 6, generator=torch.Generator().manual_seed(0)))),
    # encoder-decoder, speech
    "t5": ("encoder-decoder (relative position buckets)", _t5),
    "bart": ("encoder-decoder", _bart),
    "whisper": ("encoder-decoder speech", _whisper),
    "user-seq2seq": ("encoder-decoder", _user(TinySeq2Seq, lambda: (_ids(40), _ids(40, length=5, seed=1)))),
    "user-relpos": ("relative position buckets", _user(RelPosLM, lambda: _ids(40))),
    "wav2vec2": ("speech encoder", _wav2vec2),
    "user-speech": ("speech encoder", _user(SpeechEncoder, lambda: torch.randn(
        2, 200, generator=torch.Generator().manual_seed(0)))),
    # vision transformers
    "vit": ("ViT", lambda: (BUILTIN["tiny-vit"]().eval(), None)),
    "deit": ("ViT", _vision("DeiTForImageClassification", "DeiTConfig", hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8, num_labels=5)),
    "dinov2": ("ViT (layer scale)", _vision("Dinov2Model", "Dinov2Config", hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, mlp_ratio=2, image_size=32, patch_size=8)),
    "beit": ("ViT (relative position bias)", _vision("BeitForImageClassification", "BeitConfig", hidden_size=32,
                                                     num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                                     image_size=32, patch_size=8, num_labels=5,
                                                     use_relative_position_bias=True)),
    "swin": ("windowed ViT", lambda: (BUILTIN["tiny-swin"]().eval(), None)),
    "hiera": ("mask-unit attention (unroll/reroll)", _vision(
        "HieraForImageClassification", "HieraConfig", embed_dim=16, image_size=[64, 64], patch_size=[7, 7],
        patch_stride=[4, 4], patch_padding=[3, 3], depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
        masked_unit_size=[8, 8], num_query_pool=2, num_labels=5, size=64)),
    "user-hiera": ("mask-unit attention (unroll/reroll)", _user(TinyHiera, lambda: _img(size=16))),
    "segformer": ("hierarchical ViT (efficient attention)", _vision(
        "SegformerForImageClassification", "SegformerConfig", num_encoder_blocks=2, depths=[1, 1],
        sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2],
        mlp_ratios=[2, 2], num_labels=5)),
    # two towers
    "clip": ("two-tower (text + vision)", lambda: (BUILTIN["tiny-clip"]().eval(), None)),
    "siglip": ("two-tower (text + vision)", _siglip),
    "user-two-tower": ("two-tower (text + vision)", _user(TwoTower, lambda: (_ids(40), _img(size=16)))),
    # conv nets and conv/attention hybrids
    "resnet-hf": ("CNN (ResNet)", _vision("ResNetForImageClassification", "ResNetConfig", embedding_size=16,
                                           hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=5)),
    "user-resnet": ("CNN (ResNet)", lambda: build("resnet")),
    "convnext": ("CNN (ConvNeXt: channels-last, layer scale)", _vision(
        "ConvNextForImageClassification", "ConvNextConfig", hidden_sizes=[16, 32], depths=[2, 2], num_stages=2, num_labels=5,
        layer_scale_init_value=0.5)),
    "convnextv2": ("CNN (ConvNeXt: channels-last, GRN)", _vision(
        "ConvNextV2ForImageClassification", "ConvNextV2Config", hidden_sizes=[16, 32], depths=[2, 2], num_stages=2, num_labels=5)),
    "user-convnext": ("CNN (ConvNeXt: channels-last, layer scale)", _user(TinyConvNeXt, lambda: _img())),
    "regnet": ("CNN (grouped convs, squeeze-excite)", _vision(
        "RegNetForImageClassification", "RegNetConfig", embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
        groups_width=8, num_labels=5)),
    "mobilenetv2": ("CNN (inverted residuals)", _vision("MobileNetV2ForImageClassification", "MobileNetV2Config",
                                                        depth_multiplier=0.25, num_labels=5)),
    "mobilevit": ("conv + transformer (unfold/fold patches)", _vision(
        "MobileViTForImageClassification", "MobileViTConfig", size=64, image_size=64, hidden_sizes=[16, 24, 32],
        neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48], num_attention_heads=2, num_labels=5)),
    "user-mobilevit": ("conv + transformer (unfold/fold patches)", _user(TinyMobileViT, lambda: _img(size=16))),
    "focalnet": ("focal modulation (input-sizing attribute)", _vision(
        "FocalNetForImageClassification", "FocalNetConfig", embed_dim=16, depths=[1, 1], hidden_sizes=[16, 32],
        num_labels=5)),
    "user-input-check": ("input-sizing attribute", _user(ChannelCheckedNet, lambda: _img(size=8))),
    "user-mlp": ("MLP", lambda: build("mlp")),
    "user-gpt": ("decoder LM", lambda: build("gpt")),
}


def build_family(name: str, seed: int = 0):
    """(model, example inputs or None) of :data:`FAMILIES` ``name``, seeded."""
    torch.manual_seed(seed)
    return FAMILIES[name][1]()
