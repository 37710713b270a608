"""HDF5 feature shards ``neimsctl.h5shard/1`` (formats/h5-shard.v1.md is normative).

One module per concept:

- :mod:`~neimsctl.io.h5shard.layout`: schema, chunking, compression, the stored datasets of
  each mode and their sizes;
- :mod:`~neimsctl.io.h5shard.codec`: the chunk codec (wide columns deflated and inflated with
  ISA-L, else zlib) and chunk-wise row reads;
- :mod:`~neimsctl.io.h5shard.write`: :class:`ShardWriter`;
- :mod:`~neimsctl.io.h5shard.resume`: :class:`ResumableShardWriter` (``featurize -o FILE.h5``);
- :mod:`~neimsctl.io.h5shard.read`: :class:`ShardReader` and the one schema check,
  :func:`check_shard`.

The public names are re-exported here. Feature files of either format (shard or zblock
stream): :mod:`neimsctl.io.featsource`; the fork-safe handle the reader holds:
:mod:`neimsctl.io.h5handle`.
"""

from __future__ import annotations

from neimsctl.io.h5shard.layout import COMPRESSION, RAGGED_CHUNK, ROW_CHUNK, SCHEMA
from neimsctl.io.h5shard.read import ShardReader, check_shard
from neimsctl.io.h5shard.resume import ResumableShardWriter
from neimsctl.io.h5shard.write import FLUSH_ROWS, ShardWriter

__all__ = ["SCHEMA", "ROW_CHUNK", "RAGGED_CHUNK", "FLUSH_ROWS", "COMPRESSION", "ShardWriter",
           "ResumableShardWriter", "ShardReader", "check_shard"]
