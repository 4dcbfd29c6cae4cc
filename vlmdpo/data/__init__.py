"""The data side: rows in any known layout -> checked, decoded rows -> the processor-aware collator's batch.

- ``rows``: the package's row format (TRL's), normalised and checked one row at a time (``DataError``).
- ``images``: image files read as a viewer shows them, refused when unsafe or too large.
- ``row_format``, ``formats`` and ``readers``: dataset layouts found by their columns and read lazily; the
  public sets' readers (RLAIF-V, RLHF-V, VLFeedback, ...) are in ``readers``.
- ``validate``: every row checked as training will read it, before step 1.
- ``special_tokens``: control tokens (``</s>``, ``<|im_end|>``, image tokens) written in a row's text, named
  up front or, in a response, tokenized as plain text (``data.special_tokens_in_text``).
- ``collator``: ``PreferenceCollator``, prompts left-padded, responses right-padded, ``completion_mask`` on the
  response text only.
- ``tools``: ``vlmdpo data inspect`` and ``vlmdpo data convert``.
"""

from vlmdpo.data.collator import PreferenceCollator
from vlmdpo.data.formats import apply_format, known_formats
from vlmdpo.data.row_format import FormatError, RowFormat
from vlmdpo.data.rows import DataError, PreferenceDataset, load_preference_dataset, normalize_row, response_text
from vlmdpo.data.validate import BadRowsError, ValidationReport, validate_rows

__all__ = ["BadRowsError", "DataError", "FormatError", "PreferenceCollator", "PreferenceDataset", "RowFormat",
           "ValidationReport", "apply_format", "known_formats", "load_preference_dataset", "normalize_row",
           "response_text", "validate_rows"]
