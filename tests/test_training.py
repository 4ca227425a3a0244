"""Supernet training (``osf.train``): the sandwich rule trains small subnets, and the run is
exact under every way of splitting the work (accumulation, processes, checkpointing,
resuming after a crash)."""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import osf
from osf.training import TrainConfig, TrainData, sandwich, train
from osf.training.objective import distill_loss
from zoo import build

HERE = Path(__file__).parent
SEQ = 16


def lm_data(n_train: int = 96, n_val: int = 16, seed: int = 0) -> TrainData:
    """Sequences a small model can learn: each is a random start then +step (mod vocab)."""
    g = torch.Generator().manual_seed(seed)

    def make(n):
        start = torch.randint(0, 50, (n, 1), generator=g)
        step = torch.randint(1, 4, (n, 1), generator=g)
        return {"input_ids": (start + step * torch.arange(SEQ)) % 50}
    return TrainData("lm", make(n_train), make(n_val), "arithmetic sequences")


def gpt_supernet(seed: int = 0):
    model, ex = build("gpt", seed=seed)
    return osf.supernet(model, ex)


def weights(sn) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in sn.state_dict().items()}


def assert_same_weights(a: dict, b: dict, tol: float = 1e-5, what: str = "") -> None:
    assert a.keys() == b.keys()
    worst = max(((a[k] - b[k]).abs().max().item(), k) for k in a)
    assert worst[0] <= tol, f"{what}: {worst[1]} differs by {worst[0]:.2e}"


def assert_same_function(a, b, data: TrainData, what: str = "", tol: float = 1e-4) -> None:
    """Two supernets compute the same at the largest, the smallest and a random config.

    Compared on outputs, not raw weights: AdamW turns float noise in a gradient that is zero
    in exact arithmetic (an attention key bias, which softmax ignores) into steps of up to
    ``lr``, in weights the output does not depend on."""
    ids = data.validation["input_ids"]
    for cfg in (a.space.largest(), a.space.smallest(), a.space.sample(1)):
        with torch.no_grad(), a.use(cfg), b.use(cfg):
            a.eval(), b.eval()
            x, y = a(ids), b(ids)
        err = ((x - y).norm() / y.norm()).item()
        assert err <= tol, f"{what}: outputs differ by {err:.2e} at {cfg}"


FAST = dict(steps=4, batch_size=8, lr=3e-3, eval_every=0, save_every=0, num_random=1)


# ----------------------------------------------------------------- the sandwich
def test_sandwich_members_are_the_largest_the_smallest_and_seeded_random_ones():
    sn = gpt_supernet()
    cfg = TrainConfig(num_random=3, seed=5)
    members = sandwich(sn.space, cfg, step=7)
    assert [m[0] for m in members] == ["largest", "smallest", "random0", "random1", "random2"]
    assert members[0][1] == sn.space.largest() and members[1][1] == sn.space.smallest()
    assert members == sandwich(sn.space, cfg, step=7), "every process must draw the same subnets"
    assert members[2:] != sandwich(sn.space, cfg, step=8)[2:], "each step draws new subnets"


def test_distillation_loss_is_zero_on_the_teacher_and_positive_elsewhere():
    t = torch.randn(2, 5, 7)
    assert distill_loss(t, t, 2.0, "lm").abs() < 1e-6
    assert distill_loss(t + torch.randn(2, 5, 7), t, 2.0, "lm") > 0.01
    # the LM's last position predicts nothing: it does not count
    u = t.clone()
    u[:, -1] += 5
    assert distill_loss(u, t, 1.0, "lm").abs() < 1e-6


def _val_loss(sn, data, cfg) -> float:
    from osf.training.objective import evaluate

    with sn.use(cfg), torch.no_grad():
        sn.eval()
        return evaluate(sn, [data.validation], "lm")["loss"]


def test_sandwich_training_makes_the_small_subnets_good_where_training_the_largest_alone_does_not():
    data = lm_data()
    common = dict(steps=40, batch_size=16, lr=1e-2, eval_every=0, save_every=0, num_random=1)
    sandwiched = gpt_supernet()
    small = sandwiched.space.smallest()
    before = _val_loss(sandwiched, data, small)
    train(sandwiched, data, TrainConfig(**common), progress=False)
    alone = gpt_supernet()
    train_largest_only(alone, data, common)
    trained_small = _val_loss(sandwiched, data, small)
    alone_small = _val_loss(alone, data, small)
    assert trained_small < 0.6 * before, (before, trained_small)
    assert trained_small < 0.8 * alone_small, (trained_small, alone_small)
    # and the largest still learns the task
    assert _val_loss(sandwiched, data, sandwiched.space.largest()) < 0.6 * before


def train_largest_only(sn, data, common):
    """Plain training of the full model with the same optimizer settings."""
    from osf.training.loop import param_groups

    opt = torch.optim.AdamW(param_groups(sn, 0.01), lr=common["lr"])
    g = torch.Generator().manual_seed(0)
    sn.train()
    ids = data.train["input_ids"]
    for _ in range(common["steps"]):
        batch = ids[torch.randint(0, len(ids), (common["batch_size"],), generator=g)]
        logits = sn(batch)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    sn.eval()


# ------------------------------------------------------- the same run, split differently
def test_gradient_accumulation_equals_the_whole_batch_at_once():
    data = lm_data()
    a, b = gpt_supernet(), gpt_supernet()
    train(a, data, TrainConfig(**FAST), progress=False)
    train(b, data, TrainConfig(**FAST, grad_accum=4), progress=False)
    assert_same_function(a, b, data, what="grad_accum=4 vs 1")
    c = gpt_supernet()
    train(c, data, TrainConfig(**{**FAST, "lr": 4e-3}), progress=False)
    with pytest.raises(AssertionError):  # the comparison sees a small change of the run
        assert_same_function(a, c, data)


@pytest.mark.parametrize("name", ["gpt", "tiny-mamba"])
def test_gradient_checkpointing_gives_the_same_training(name):
    model_a, ex = build(name)
    model_b, _ = build(name)
    a, b = osf.supernet(model_a, ex), osf.supernet(model_b, ex)
    vocab = 50 if name == "gpt" else model_a.config.vocab_size
    data = TrainData("lm", {"input_ids": torch.randint(0, vocab, (16, SEQ))},
                     {"input_ids": torch.randint(0, vocab, (4, SEQ))}, "random")
    cfg = TrainConfig(**{**FAST, "steps": 2})
    train(a, data, cfg, progress=False)
    train(b, data, TrainConfig(**{**cfg.to_dict(), "gradient_checkpointing": True}), progress=False)
    assert_same_function(a, b, data, what=f"{name}: checkpointing on vs off") if name == "gpt" else \
        assert_same_weights(weights(a), weights(b), tol=1e-4, what=f"{name}: checkpointing on vs off")
    assert all("forward" not in blk.__dict__ for blk in b.blocks), "the blocks keep their own forward afterwards"


def test_resuming_after_a_crash_gives_the_uninterrupted_run(tmp_path):
    data = lm_data()
    cfg = TrainConfig(**{**FAST, "steps": 6, "save_every": 2, "eval_every": 3, "num_random": 2})
    whole = gpt_supernet()
    full_run = train(whole, data, cfg, out_dir=tmp_path / "whole", progress=False)

    def crash(step, row):
        if step == 5:
            raise KeyboardInterrupt("killed")
    crashed = gpt_supernet()
    with pytest.raises(KeyboardInterrupt):
        train(crashed, data, cfg, out_dir=tmp_path / "run", progress=False, callback=crash)
    resumed_sn = gpt_supernet()  # a fresh process: rebuilt from the original model
    resumed = train(resumed_sn, data, cfg, out_dir=tmp_path / "run", progress=False)
    assert resumed.start_step == 4
    assert_same_weights(weights(whole), weights(resumed_sn), tol=0, what="resumed vs uninterrupted")
    rows = {r["step"]: r for r in full_run.history}
    for r in resumed.history:
        for k, v in r.items():
            assert v == pytest.approx(rows[r["step"]][k], rel=1e-5, abs=1e-7), (r["step"], k)
    # the metrics file reads as one run: steps 1..6 once each
    with (tmp_path / "run" / "metrics.csv").open() as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert {"loss/largest", "loss/smallest", "val/half/loss"} <= set(resumed.history[-1])


def test_resuming_with_other_settings_is_refused(tmp_path):
    data = lm_data()
    train(gpt_supernet(), data, TrainConfig(**{**FAST, "save_every": 2}), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(lr: 0\.003 -> 0\.001\)"):
        train(gpt_supernet(), data, TrainConfig(**{**FAST, "lr": 1e-3}), out_dir=tmp_path, progress=False)
    # more steps is fine: the run continues
    more = train(gpt_supernet(), data, TrainConfig(**{**FAST, "steps": 6}), out_dir=tmp_path, progress=False)
    assert more.start_step == 4 and [r["step"] for r in more.history] == [5, 6]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_end_with_the_weights_of_one_process_on_the_same_global_batch(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HERE}:{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
           str(HERE / "train_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(out / "rank0.pt")
    rank1 = torch.load(out / "rank1.pt")
    assert_same_weights(rank0, rank1, tol=0, what="rank 0 vs rank 1")
    from train_worker import run_training

    single, two = gpt_supernet(), gpt_supernet()
    run_training(single)
    two.load_state_dict(rank0)
    assert_same_function(single, two, lm_data(), what="2 processes vs 1")


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(precision="fp16"), r"precision must be one of \('auto', 'bf16', 'fp32'\)"),
    (dict(steps=0), r"TrainConfig.steps must be a positive number"),
    (dict(warmup_steps=10, steps=5), r"warmup_steps \(10\) must be below steps \(5\)"),
    (dict(eval_batches=0), r"eval_batches must be a positive int or None"),
    (dict(num_random=-1), r"TrainConfig.num_random must be >= 0"),
])
def test_bad_training_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{**FAST, **kwargs})
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['stepz'\]"):
        TrainConfig.from_dict({"stepz": 3})


def test_a_batch_that_does_not_split_evenly_is_refused():
    with pytest.raises(ValueError, match=r"batch_size \(6\) must be a multiple of processes x grad_accum \(1 x 4\)"):
        train(gpt_supernet(), lm_data(), TrainConfig(**FAST), progress=False, batch_size=6, grad_accum=4)


def test_bad_training_data_is_refused():
    with pytest.raises(TypeError, match=r"data must be an osf.training.TrainData"):
        train(gpt_supernet(), {"input_ids": torch.zeros(4, 4)}, TrainConfig(**FAST), progress=False)
    empty = TrainData("lm", {"input_ids": torch.zeros(0, SEQ, dtype=torch.long)}, lm_data().validation, "empty")
    with pytest.raises(ValueError, match="the train split is empty"):
        train(gpt_supernet(), empty, TrainConfig(**FAST), progress=False)
