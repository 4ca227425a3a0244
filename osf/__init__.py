"""OSF: Optimized Supernet Formation.

Turn a trained model into a weight-sharing supernet, search it for the best smaller
subnets under a budget, and get back real, smaller models.
"""
from osf.elastic import Supernet, SupernetConfig, load_supernet, supernet
from osf.elastic.importance import RandomInputsWarning
from osf.elastic.io import load_subnet, save_subnet
from osf.elastic.verify import VerificationError
from osf.space import Config, SearchSpace
from osf.training import TrainConfig, TrainData, load_train_data, train
from osf import search  # noqa: E402  (callable: osf.search(sn, evaluator, ...))
from osf.hub import push  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Config", "SearchSpace", "Supernet", "SupernetConfig", "VerificationError", "supernet", "load_supernet",
           "search", "save_subnet", "load_subnet", "train", "TrainConfig", "TrainData", "load_train_data", "push", "RandomInputsWarning",
           "__version__"]
