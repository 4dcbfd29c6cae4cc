"""Readers for published preference datasets and other toolkits' files, as ``vlmdpo.formats.RowFormat`` objects.

Registered with the library through the ``vlmdpo.formats`` entry point (``pyproject.toml``), so
``data.format=auto`` finds them; each module documents its source, license, columns and mapping.
"""

from data_recipes.formats.conversations import LLAVA_RLHF, POVID
from data_recipes.formats.mdpo import MDPO
from data_recipes.formats.question import HA_DPO, RLAIF_V
from data_recipes.formats.rlhf_v import RLHF_V
from data_recipes.formats.toolkits import LLAMAFACTORY, LLAMAFACTORY_MESSAGES, SWIFT
from data_recipes.formats.vlfeedback import VLFEEDBACK

FORMATS = [RLAIF_V, HA_DPO, RLHF_V, VLFEEDBACK, POVID, LLAVA_RLHF, MDPO, LLAMAFACTORY, LLAMAFACTORY_MESSAGES, SWIFT]

__all__ = ["FORMATS", "HA_DPO", "LLAMAFACTORY", "LLAMAFACTORY_MESSAGES", "LLAVA_RLHF", "MDPO", "POVID", "RLAIF_V", "RLHF_V", "SWIFT",
           "VLFEEDBACK"]
