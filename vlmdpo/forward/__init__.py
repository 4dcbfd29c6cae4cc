"""The forward side: a collated batch -> per-token log-probs kept on the response tokens only.

- ``logps``: the plain path, one padded sequence per response (the reference implementation).
- ``fast``: the packed path, ``[image + prompt; chosen; rejected]`` as one sequence, images encoded once;
  ``choose_forward_path`` checks it against the plain path on a probe batch. Its parts: ``packing`` (the
  packed sequence), ``tree_attention`` (responses that see their prompt and their own past), ``lm_head`` (the
  head and log-softmax a slice of rows at a time).
- ``image_groups``: one plain forward per image count where a model's own forward depends on the batch's
  (Mllama's cross-attention to image slots padded per row).
- ``probes``: the checks before step 1 (a later response token must not move earlier log-probs).
"""

from vlmdpo.forward.fast import FORWARD_PATHS, choose_forward_path, packed_completion_logps, shared_image_features
from vlmdpo.forward.logps import completion_logps

__all__ = ["FORWARD_PATHS", "choose_forward_path", "completion_logps", "packed_completion_logps",
           "shared_image_features"]
