"""The fill plugin contract: how a perturbation metric fills the pixels it removes."""

from __future__ import annotations

from .options import Configurable


class Fill(Configurable):
    """Base of fill plugins (blur, ROAD imputation, a third party's)."""
