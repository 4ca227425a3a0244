"""Shared offline fixtures: a locally trained tokenizer, a tiny Mamba LM, a local task."""
from __future__ import annotations

import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.dirname(__file__))  # tests/zoo.py and friends


@pytest.fixture(scope="session")
def corpus():
    from osf.demo import load_corpus

    train, held = load_corpus()
    return train[:60], held


@pytest.fixture(scope="session")
def tokenizer(corpus, tmp_path_factory):
    from osf.demo import train_tokenizer

    return train_tokenizer(corpus[0], vocab_size=400, out_dir=tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tiny_lm(tokenizer):
    from transformers import MambaForCausalLM

    from osf.demo import demo_config

    torch.manual_seed(0)
    return MambaForCausalLM(demo_config(len(tokenizer), hidden_size=32, num_hidden_layers=2, state_size=8)).eval()


@pytest.fixture(scope="session")
def lastword_task(corpus, tmp_path_factory):
    from osf.search.tasks import make_lastword_task

    d = tmp_path_factory.mktemp("tasks")
    make_lastword_task(corpus[1], d, name="osf_test_lastword", n=12, max_words=24)
    return d, "osf_test_lastword"
