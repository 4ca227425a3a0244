"""Search a supernet for its best subnets (Optuna), with lm-eval, image and perplexity scores.

``osf.search(sn, evaluator, ...)`` and ``osf.search.search(...)`` are the same call.
"""
import sys
import types

from osf.search.images import ImageAccuracy
from osf.search.lmeval import LMEval
from osf.search.perplexity import Perplexity
from osf.search.protocol import CallableEvaluator, Evaluator, SupernetLike, as_evaluator
from osf.search.result import SearchResult
from osf.search.study import search
from osf.space import config_key
from osf.search.tasks import make_lastword_task
from osf.search.zeroshot import ZeroShotAccuracy

__all__ = [
    "CallableEvaluator", "Evaluator", "ImageAccuracy", "LMEval", "Perplexity", "SearchResult", "SupernetLike",
    "ZeroShotAccuracy", "as_evaluator", "config_key", "make_lastword_task", "search",
]


class _CallableModule(types.ModuleType):
    """Lets ``osf.search(...)`` call :func:`search` while ``osf.search.*`` stays a package."""

    def __call__(self, *args, **kwargs) -> SearchResult:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
