"""davfed: mount a Dynafed storage federation as a read-only FUSE filesystem."""

__version__ = "0.1.0"
