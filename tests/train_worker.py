"""One rank of the two-process training test (launched by torchrun): trains the tiny GPT
supernet on its share of each global batch and saves its final weights."""
from __future__ import annotations

import sys
from pathlib import Path

import torch


def run_training(sn) -> None:
    from test_training import lm_data

    from osf.training import TrainConfig, train

    train(sn, lm_data(), TrainConfig(steps=3, batch_size=8, lr=3e-3, eval_every=0, save_every=0, num_random=1),
          progress=False)


def main(out: Path) -> None:
    from osf.training.distributed import init_from_env, rank_and_world
    from test_training import gpt_supernet

    assert init_from_env(), "launch with torchrun"
    rank, world = rank_and_world()
    assert world == 2
    sn = gpt_supernet()
    run_training(sn)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in sn.state_dict().items()}, out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
