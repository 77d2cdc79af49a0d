"""Built-in dataset plugins: ``phantom``, ``folder``, ``cxr4``."""

from xaicxr import hookimpl

from .cxr4 import Cxr4Dataset
from .folder import FolderDataset
from .phantom import PhantomDataset


@hookimpl
def xaicxr_datasets():
    return {"phantom": PhantomDataset, "folder": FolderDataset, "cxr4": Cxr4Dataset}
