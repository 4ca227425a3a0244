"""Supernet training: data loading (:mod:`osf.training.data`)."""
from osf.training.data import TrainData, lm_blocks, load_train_data

__all__ = ["TrainData", "load_train_data", "lm_blocks"]
