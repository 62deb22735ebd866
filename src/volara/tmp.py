"""Deprecated: the old name of `volara.segment_utils`.

volara 1.0.5 renamed ``volara.tmp`` to ``volara.segment_utils`` and kept this
alias, which warns on import; its published tutorial still imports it. The
names below are the very same objects as in `volara.segment_utils`. Import
from there instead::

    from volara.segment_utils import replace_values, seg_to_affgraph
"""

import warnings

from .segment_utils import (
    filter_mapping_to_block,
    prepare_mapping,
    replace_values,
    replace_values_sorted,
    seg_to_affgraph,
    warmup_replace_values_sorted,
)

__all__ = [
    "filter_mapping_to_block",
    "prepare_mapping",
    "replace_values",
    "replace_values_sorted",
    "seg_to_affgraph",
    "warmup_replace_values_sorted",
]

warnings.warn(
    "volara.tmp is deprecated: it was renamed to volara.segment_utils. "
    "Import from volara.segment_utils instead.",
    DeprecationWarning,
    stacklevel=2,
)
