"""Readers for published preference datasets and other toolkits' files, as ``vlmdpo.data.row_format.RowFormat`` objects.

``vlmdpo.data.formats`` knows them all, so ``data.format=auto`` finds them by their columns and
``data.format=rlaif_v`` names one; each module documents its source, license, columns and mapping.
"""

from vlmdpo.data.readers.conversations import LLAVA_RLHF, POVID
from vlmdpo.data.readers.llava_hound import LLAVA_HOUND
from vlmdpo.data.readers.mdpo import MDPO
from vlmdpo.data.readers.question import HA_DPO, RLAIF_V
from vlmdpo.data.readers.rlhf_v import RLHF_V
from vlmdpo.data.readers.toolkits import LLAMAFACTORY, LLAMAFACTORY_MESSAGES, SWIFT
from vlmdpo.data.readers.vlfeedback import VLFEEDBACK

FORMATS = [RLAIF_V, HA_DPO, RLHF_V, VLFEEDBACK, POVID, LLAVA_RLHF, MDPO, LLAMAFACTORY, LLAMAFACTORY_MESSAGES, SWIFT,
           LLAVA_HOUND]

__all__ = ["FORMATS", "HA_DPO", "LLAMAFACTORY", "LLAMAFACTORY_MESSAGES", "LLAVA_HOUND", "LLAVA_RLHF", "MDPO", "POVID",
           "RLAIF_V", "RLHF_V", "SWIFT", "VLFEEDBACK"]
