"""Built-in quality metrics (``[quality] metrics``), registered like a third party's: each is
one class in one module, on top of the figures of :mod:`xaicxr.analysis`. No TensorFlow import
happens here."""

from xaicxr import hookimpl

from .evidence import EvidenceLocalisation
from .faithfulness import Faithfulness
from .localisation import Localisation
from .randomisation import Randomisation
from .region_reliance import RegionReliance
from .reliability import Reliability
from .reliance import Reliance
from .templates import Distinctiveness, TemplateFaithfulness, TemplateLocalisation


@hookimpl
def xaicxr_metric():
    return {
        "localisation": Localisation,
        "localisation-evidence": EvidenceLocalisation,
        "reliability": Reliability,
        "template": TemplateLocalisation,
        "template-faithfulness": TemplateFaithfulness,
        "faithfulness": Faithfulness,
        "randomisation": Randomisation,
        "distinctiveness": Distinctiveness,
        "reliance": Reliance,
        "region-reliance": RegionReliance,
    }
