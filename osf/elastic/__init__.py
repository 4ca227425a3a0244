"""Elastic supernets: weight-sharing subnets of a model, run in place and extracted."""
from osf.elastic.checkpoint import load_supernet
from osf.elastic.config import SupernetConfig
from osf.elastic.supernet import Supernet, build_space, default_choices, supernet

__all__ = ["Supernet", "SupernetConfig", "supernet", "load_supernet", "build_space", "default_choices"]
