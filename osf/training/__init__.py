"""Supernet training: the sandwich rule with in-place distillation (:func:`train`), its
settings (:class:`TrainConfig`) and its data (:func:`load_train_data`)."""
from osf.training.config import TrainConfig
from osf.training.data import TrainData, lm_blocks, load_train_data
from osf.training.loop import TrainResult, config_at_fraction, sandwich, train

__all__ = ["TrainConfig", "TrainData", "TrainResult", "load_train_data", "lm_blocks", "train", "sandwich",
           "config_at_fraction"]
