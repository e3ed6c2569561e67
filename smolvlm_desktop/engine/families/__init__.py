"""Model families: what differs between SmolVLM and FastVLM, one module each (base.py says
what a family provides). `family_for(config)` picks one from config.json's model_type."""

from __future__ import annotations

from .base import Family
from .fastvlm import FASTVLM
from .smolvlm import SMOLVLM

FAMILIES: tuple[Family, ...] = (SMOLVLM, FASTVLM)


def family_for(config: dict) -> Family:
    """The family of a model folder's config.json. A folder without a model_type (or with one
    no family claims) is read as SmolVLM, as every folder was before families existed."""
    model_type = str(config.get("model_type", ""))
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    return SMOLVLM


__all__ = ["FAMILIES", "FASTVLM", "Family", "SMOLVLM", "family_for"]
