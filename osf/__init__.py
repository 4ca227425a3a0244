"""OSF: Optimized Supernet Formation.

Turn a trained model into a weight-sharing supernet, search it for the best smaller
subnets under a budget, and get back real, smaller models.
"""
from osf.space import Config, SearchSpace

__version__ = "0.1.0"

__all__ = ["Config", "SearchSpace", "__version__"]
