"""Search a supernet for its best subnets (Optuna), with lm-eval, image and perplexity scores."""
from osf.search.protocol import CallableEvaluator, Evaluator, SupernetLike, as_evaluator
from osf.search.result import SearchResult
from osf.search.study import config_key, search

__all__ = ["CallableEvaluator", "Evaluator", "SearchResult", "SupernetLike", "as_evaluator", "config_key", "search"]
