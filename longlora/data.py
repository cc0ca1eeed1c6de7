"""Deprecated: moved to :mod:`longlora.training.data` (training data: packed rows and SFT examples).

Importing this module warns (``DeprecationWarning``); it goes in the next release (CHANGELOG.md).
"""

from data_tools.deprecation import warn_moved_module
from longlora.training.data import (  # noqa: F401 - the old path's public names, for one release
    IGNORE_INDEX,
    PACK_MODES,
    PackedDataset,
    SFTDataset,
    SFTExample,
    SFTStats,
    TokenStream,
    build_sft_example,
    collate,
    concat_streams,
    read_pretrain_stream,
    read_sft_dataset,
    tokenize_documents,
)

warn_moved_module(__name__, "longlora.training.data")
