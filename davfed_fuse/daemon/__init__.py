"""The mount daemon: composition root, FUSE handlers, namespace and open files."""
