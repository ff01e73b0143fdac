"""The multi-level cache: memory → disk → Redis, and its use in the job path."""

from ultra_tasks.cache.layered import CacheValueError, DistributedCache
from ultra_tasks.cache.llm import request_digest

__all__ = ["CacheValueError", "DistributedCache", "request_digest"]
