"""The block cache: block files on disk, their sqlite index, eviction, in-flight fetches."""
