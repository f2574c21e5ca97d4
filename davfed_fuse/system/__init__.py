"""The operating system's side: the mount table and libfuse."""
