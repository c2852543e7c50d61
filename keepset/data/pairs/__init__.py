"""Image-text pair sources streamed shard by shard (ids are uids; a pair has an image and a text, no class).

- ``PairBatch``: ids, texts, image / text embeddings, decoded images, extra columns, the shard's name.
- ``PairSource``: ``shards``, ``iter_shards(columns)``, ``iter_batches(batch_size, columns)``, ``len()`` when
  cheap, ``fingerprint()``.
- ``DataCompSource`` (``datacomp:DIR``), ``WebDatasetSource`` (``wds:PATH``), ``HFSource`` (``hf:PATH``),
  and ``load_pairs(spec)`` for spec strings.
"""

from keepset.data.pairs.base import PairBatch, PairSource, concat_batches
from keepset.data.pairs.datacomp import EMBEDDING_KEYS, SCORE_COLUMNS, DataCompSource, uid_to_u64
from keepset.data.pairs.decode import MAX_IMAGE_PIXELS, ImageDecoder
from keepset.data.pairs.hf import HFSource
from keepset.data.pairs.spec import PAIRS_SPEC_HELP, load_pairs
from keepset.data.pairs.wds import WebDatasetSource

__all__ = ["PairBatch", "PairSource", "concat_batches", "DataCompSource", "WebDatasetSource", "HFSource",
           "load_pairs", "PAIRS_SPEC_HELP", "EMBEDDING_KEYS", "SCORE_COLUMNS", "uid_to_u64", "ImageDecoder",
           "MAX_IMAGE_PIXELS"]
