"""Search quality: importance from data, Taylor/Fisher measures, budget-aware sampling, corners,
the depth floor and re-ranking on a larger sample (issue 11). Tiny models, hand-made references."""
from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import osf
from osf.elastic.importance import RandomInputsWarning, gradient_importance
from osf.ir import analyze
from osf.space import config_key

D = 8


class Block(nn.Module):
    def __init__(self, hidden: int = 16):
        super().__init__()
        self.up, self.down = nn.Linear(D, hidden), nn.Linear(hidden, D)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


class Net(nn.Module):
    """A residual MLP stack with a classifier head."""

    def __init__(self, n_blocks: int = 4, hidden: int = 16):
        super().__init__()
        self.blocks = nn.ModuleList([Block(hidden) for _ in range(n_blocks)])
        self.head = nn.Linear(D, 5)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def data_dependent_net() -> Net:
    """Block 0 reads only features 4..7 (zero in the data) with large weights, block 1 only features
    0..3 with small ones: on random inputs block 0 changes the stream most, on the data it does nothing."""
    torch.manual_seed(0)
    net = Net(n_blocks=3)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
        net.blocks[0].up.weight[:, :4] = 0
        net.blocks[0].up.weight.mul_(4.0)
        net.blocks[0].up.bias.fill_(-0.2)  # silent without features 4..7
        net.blocks[0].down.bias.zero_()
        net.blocks[1].up.weight[:, 4:] = 0
        net.blocks[1].up.weight.mul_(1.5)
    return net.eval()


def data_batches(n: int = 3, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.zeros(16, D)
        x[:, :4] = torch.randn(16, 4, generator=g)
        out.append(x)
    return out


class DataScore:
    """An evaluator that holds data: it scores some batches and offers others for calibration."""

    name = "data-score"

    def __init__(self):
        self.scored, self.held_out = data_batches(2, seed=7), data_batches(3, seed=1)
        self.calls = 0

    def __call__(self, model: nn.Module) -> float:
        with torch.no_grad():
            return -float(sum(model(x).pow(2).mean() for x in self.scored))

    def calibration_batches(self, n: int = 8) -> list[torch.Tensor]:
        self.calls += 1
        return self.held_out[:n]


def kl_when_dropped(net: Net, block: int, batches: list[torch.Tensor]) -> float:
    """Hand reference: KL(full || block dropped) of the softmaxed outputs, averaged over batches."""
    dropped = copy.deepcopy(net)
    dropped.blocks[block] = nn.Identity()
    total = 0.0
    with torch.no_grad():
        for x in batches:
            p, q = F.log_softmax(net(x).double(), -1), F.log_softmax(dropped(x).double(), -1)
            total += float(F.kl_div(q, p, log_target=True, reduction="batchmean"))
    return total / len(batches)


def test_importance_from_the_evaluators_data_by_default_and_a_warning_on_random_inputs():
    net = data_dependent_net()
    ev = DataScore()
    ex = torch.randn(4, D)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomInputsWarning)  # data given: no warning
        sn = osf.supernet(copy.deepcopy(net), ex, calibration=ev)
    assert ev.calls == 1 and sn.build_config.calibration_batches == 3
    # the block whose removal costs least on the held-out data goes first (hand-computed KL)
    costs = {i: kl_when_dropped(net, i, ev.held_out) for i in range(3)}
    first = min(costs, key=costs.get)
    assert first == 0 and costs[0] < 1e-9 < costs[1]
    assert sn.space.stacks["blocks"][0] == "blocks.0"
    with pytest.warns(RandomInputsWarning, match="random example inputs"):
        blind = osf.supernet(copy.deepcopy(net), ex)
    assert blind.space.stacks["blocks"][0] != "blocks.0"  # random inputs rank the silent block high
    # searching an uncalibrated supernet with an evaluator that has data warns too
    with pytest.warns(RandomInputsWarning, match="calibrat"):
        osf.search(blind, ev, n_trials=2, show_progress=False, rerank=0)
    # sn.calibrate(evaluator) gives the calibrated build's order, without changing the model's outputs
    x = data_batches(1, seed=3)[0]
    before = blind(x)
    blind.calibrate(ev)
    assert blind.space.stacks == sn.space.stacks
    torch.testing.assert_close(blind(x), before, rtol=1e-5, atol=1e-6)


def test_calibrate_refuses_a_supernet_whose_weights_changed():
    sn = osf.supernet(data_dependent_net(), torch.randn(4, D), calibration=data_batches())
    assert sn.can_calibrate
    with torch.no_grad():
        sn.full("head.weight").add_(0.1)  # as an optimizer step would
    assert not sn.can_calibrate
    with pytest.raises(ValueError, match="changed since the supernet was built"):
        sn.calibrate(data_batches())


@pytest.mark.parametrize("kind", ["taylor", "fisher"])
def test_taylor_and_fisher_importance_match_a_hand_computation(kind):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()  # biases too, so a missed member shows
    g = torch.Generator().manual_seed(0)
    batches = [{"input": torch.randn(5, 4, generator=g), "labels": torch.randint(3, (5,), generator=g)}
               for _ in range(3)]
    ir = analyze(model, torch.randn(2, 4))
    hidden = next(d for d in ir.dims.values() if d.size == 6)
    # dict batches: 'labels' is taken out for the loss, the rest are keyword inputs (Sequential's 'input')
    calibration = [{"input": b["input"], "labels": b["labels"]} for b in batches]
    scores = gradient_importance(ir, calibration, model, kind=kind)[hidden.name]
    # reference: per batch, s_c = sum over the channel's parameters (row c of W1, b1[c], column c of W2) of w * dL/dw
    per_batch = []
    for b in batches:
        ref = copy.deepcopy(model)
        loss = F.cross_entropy(ref(b["input"]), b["labels"])
        loss.backward()
        w1, b1, w2 = ref[0].weight, ref[0].bias, ref[2].weight
        s = ((w1.double() * w1.grad.double()).sum(1) + b1.double() * b1.grad.double()
             + (w2.double() * w2.grad.double()).sum(0))
        per_batch.append(s.detach())
    stacked = torch.stack(per_batch)
    want = stacked.mean(0).abs() if kind == "taylor" else stacked.pow(2).mean(0)
    torch.testing.assert_close(scores, want, rtol=1e-6, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())  # the model is left as it was


def tiny_supernet(n_blocks: int = 4, **kw) -> osf.Supernet:
    torch.manual_seed(0)
    return osf.supernet(Net(n_blocks, hidden=32).eval(), torch.randn(4, D), calibration=[torch.randn(8, D)], **kw)


def active_params(model: nn.Module) -> float:
    return float(sum(p.numel() for p in model.parameters()))


def test_budget_aware_sampling_lands_near_the_budget_and_records_the_repaired_config():
    sn = tiny_supernet()
    full = sn.num_params(sn.space.largest())
    res = osf.search(sn, active_params, n_trials=30, constraints={"max_params_frac": 0.6}, seed=0,
                     show_progress=False, rerank=0)
    trials = res.study.get_trials(states=(osf.search.study.TrialState.COMPLETE,))
    sampled = [t for t in trials if t.number >= 2]  # after the enqueued largest and smallest
    fracs = [t.user_attrs["params"] / full for t in sampled]
    within = sum(0.9 * 0.6 - 1e-9 <= f <= 0.6 + 1e-9 for f in fracs) / len(fracs)
    assert within >= 0.8, fracs
    for t in trials:  # what the sampler records is what was scored (it learns from the real configs)
        assert config_key(sn.space.canonical(sn.space.to_config(t.params))) == t.user_attrs["config"]
    # without the repair, far fewer trials land there
    free = osf.search(sn, active_params, n_trials=30, constraints={"max_params_frac": 0.6}, seed=0,
                      show_progress=False, rerank=0, budget_band=None, study_name="free")
    free_fracs = free.trials["params"].iloc[2:] / full
    assert ((free_fracs >= 0.54) & (free_fracs <= 0.6)).mean() < 0.5


def test_the_depth_only_and_width_only_corners_at_the_budget_are_enqueued():
    sn = tiny_supernet()
    space = sn.space
    full = sn.num_params(space.largest())
    limit = 0.6 * full
    res = osf.search(sn, active_params, n_trials=4, constraints={"max_params_frac": 0.6}, show_progress=False,
                     rerank=0)
    first = [json.loads(res.trials.set_index("number").loc[i, "config"]) for i in range(4)]
    assert first[0] == space.largest() and first[1] == space.canonical(space.smallest())
    # depth only, by hand: full widths, layers dropped in the space's drop order until the budget fits
    names = space.stacks["blocks"]
    widths = {d: c[0] for d, c in space.dims.items()}
    want_depth = next(cfg for k in range(len(names) + 1)
                      for cfg in [{**widths, **{b: i >= k for i, b in enumerate(names)}}]
                      if sn.num_params(cfg) <= limit)
    assert space.canonical(want_depth) in first[2:]
    # width only, by hand: every dim at the same fraction of its size, the largest that fits, all layers
    fits = []
    for r in sorted({c / ch[0] for ch in space.dims.values() for c in ch}, reverse=True):
        cfg = {**{d: max([c for c in ch if c <= r * ch[0] + 1e-9] or [ch[-1]]) for d, ch in space.dims.items()},
               **{b: True for b in space.blocks}}
        if sn.num_params(cfg) <= limit:
            fits.append(cfg)
    assert fits[0] in first[2:]


def test_the_default_depth_floor_keeps_a_quarter_of_each_stack():
    assert tiny_supernet(8).space.min_depth == {"blocks": 2}
    assert tiny_supernet(4).space.min_depth == {"blocks": 1}
    assert tiny_supernet(8, config=osf.SupernetConfig(min_depth=0.5)).space.min_depth == {"blocks": 4}
    assert osf.SupernetConfig().min_depth == 0.25
    with pytest.raises(ValueError, match="min_depth must be a fraction in \\(0, 1\\]"):
        osf.SupernetConfig(min_depth=0)


def first_block_params(model: nn.Module) -> float:
    return float(sum(p.numel() for p in model.blocks[0].parameters()))


class SmallAndLarge:
    """The small sample prefers more parameters; the larger sample prefers a smaller first layer (its
    ranking of the same configs differs)."""

    name = "small-sample"

    def __call__(self, model: nn.Module) -> float:
        return active_params(model)

    def full_sample(self):
        return lambda model: -first_block_params(model)


def test_reranking_picks_by_the_larger_sample():
    sn = tiny_supernet()
    res = osf.search(sn, SmallAndLarge(), n_trials=20, constraints={"max_params_frac": 0.6}, seed=1,
                     show_progress=False, rerank=4)
    df = res.trials[res.trials["feasible"]].sort_values(["score", "params", "number"], ascending=[False, True, True])
    top = df.drop_duplicates("config").iloc[:4]
    assert len(res.reranked) == 4 and set(res.reranked) == set(top["config"])
    # by hand: the larger sample's score of each of the 4 best by the small one
    large = {}
    for key in top["config"]:
        with sn.use(json.loads(key)):
            large[key] = -first_block_params(sn.model)
    want = max(top["config"], key=lambda k: (large[k], -top.set_index("config").loc[k, "params"]))
    best = res.best(max_params_frac=0.6)
    assert best["config"] == want and best["rerank_score"] == large[want]
    assert want != top.iloc[0]["config"]  # the rankings differ here: the re-ranking decided
    plain = osf.search(sn, SmallAndLarge(), n_trials=20, constraints={"max_params_frac": 0.6}, seed=1,
                       show_progress=False, rerank=0, study_name="plain")
    assert plain.best(max_params_frac=0.6)["config"] == top.iloc[0]["config"]


def test_perplexity_holds_out_its_calibration_blocks(tokenizer, corpus):
    from osf.search import Perplexity

    ev = Perplexity(corpus[1][:20], tokenizer, seq_len=16, batch_size=4, max_batches=2)
    cal = torch.cat([b["input_ids"] for b in ev.calibration_batches(100)])
    everything = Perplexity(corpus[1][:20], tokenizer, seq_len=16, batch_size=4, calibration_share=0.0).blocks
    assert 0 < len(cal) < len(everything) // 5
    # the scored blocks and the calibration blocks partition the text: the calibration ones are never scored
    assert torch.equal(torch.cat([ev.blocks, cal]), everything)
    assert ev.full_sample().max_batches is None
    assert Perplexity(corpus[1][:20], tokenizer, seq_len=16).full_sample() is None


def test_lmeval_calibrates_on_documents_it_does_not_score(tokenizer, lastword_task):
    from osf.search import LMEval

    folder, name = lastword_task
    passages = [json.loads(line)["text"] for line in (folder / f"{name}.jsonl").read_text().splitlines()]
    ev = LMEval(name, tokenizer, include_path=folder, limit=4)
    # by hand: the documents past the 4 scored ones, as lm-eval feeds them (context, delimiter, target)
    want = [" ".join(p.split(" ")[:-1]) + "  " + p.split(" ")[-1] for p in passages[4:]]
    assert ev.calibration_texts() == want
    batches = ev.calibration_batches(n=2, batch_size=2, seq_len=8)
    assert batches and all(b["input_ids"].shape[1] == 8 for b in batches) and len(batches) <= 2
    ids = tokenizer(want[0])["input_ids"]
    assert batches[0]["input_ids"][0].tolist() == ids[:8]
    assert LMEval(name, tokenizer, include_path=folder).calibration_batches() is None  # every document is scored
    assert ev.full_sample().limit is None and ev.limit == 4


def test_image_accuracy_calibrates_on_the_train_split(tmp_path):
    import pickle

    import numpy as np

    from osf.search import ImageAccuracy

    rng = np.random.default_rng(0)
    train_x, train_y = [], []
    for name, n in [("test_batch", 12)] + [(f"data_batch_{i}", 10) for i in range(1, 6)]:
        x, y = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 3, size=n)
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": x.reshape(n, -1), b"labels": [int(v) for v in y]}, f)
        if name != "test_batch":
            train_x.append(x)
            train_y.append(y)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ev = ImageAccuracy(f"cifar10:{tmp_path}", mean=mean, std=std)
    batches = ev.calibration_batches(n=2, batch_size=8)
    # by hand: 16 images spread evenly over the 50 training images, normalised, with their labels
    x, y = np.concatenate(train_x), np.concatenate(train_y)
    pick = np.round(np.linspace(0, 49, 16)).astype(int)
    want = (torch.from_numpy(x[pick]).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(torch.cat([b["pixel_values"] for b in batches]), want)
    assert torch.cat([b["labels"] for b in batches]).tolist() == y[pick].tolist()
    assert ImageAccuracy(f"cifar10:{tmp_path}", split="train").calibration_batches() is None  # it scores train
    assert ImageAccuracy(f"cifar10:{tmp_path}", calibration_split=None).calibration_batches() is None
