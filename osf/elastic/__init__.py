"""Elastic supernets: weight-sharing subnets of a model, run in place and extracted."""
from osf.elastic.supernet import Supernet, build_space, default_choices, supernet

__all__ = ["Supernet", "supernet", "build_space", "default_choices"]
