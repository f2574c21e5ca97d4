"""The block cache: block files on disk, their sqlite index, eviction, in-flight fetches.

``blockcache.BlockCache`` is the one façade the daemon uses; ``blockcache`` also
re-exports the public names (``FileIdentity``, ``Fetcher``, ``CacheStats``,
``CacheError``, ``CacheLocked``, ``BadFetch``). They are not re-exported here: this
package also holds ``blockmath`` (pure) and ``stats`` (no trio), whose importers must
not load the cache's trio and xxhash through this file.
"""
