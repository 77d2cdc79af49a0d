"""Built-in aggregators: ``mean``, ``std``, ``median``, ``trimmed-mean``, ``pca``."""

from xaicxr import hookimpl

from .histogram import Median, TrimmedMean
from .moments import Mean, Std
from .pca import Pca


@hookimpl
def xaicxr_aggregators():
    return {"mean": Mean, "std": Std, "median": Median, "trimmed-mean": TrimmedMean, "pca": Pca}
