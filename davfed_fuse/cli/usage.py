"""``USAGE``: the top-level usage of ``davfed``, shown by ``--help`` and in davfed(8)."""

USAGE = """\
usage: davfed COMMAND [ARGS...]

commands:
  mount [-f] [-d] [-s] [-v] [-o OPTS]... URL MOUNTPOINT
                                 mount a federation read-only (returns once live;
                                 -f serves it in the foreground)
  umount [-l] MOUNTPOINT         unmount it
  config show [-o OPTS]... MOUNTPOINT|URL
                                 the options a mount uses and where each came from
  status MOUNTPOINT [--json]     a running mount's state (exit 0 healthy,
                                 2 no answer, 3 degraded)
  ctl MOUNTPOINT COMMAND...      change a running mount: log-level, forget,
                                 proxy info|set (davfed ctl MNT help)
  prefetch PATH... [-r DIR]... [--jobs N] [--quiet] [--json]
                                 warm the cache: read files through a davfed mount
  cache stats|clean [--cache-dir DIR] [--json]
                                 the block cache's size and hit rate; empty it
  verify [--algorithm adler32|md5] PATH...
                                 compare files read through davfed with the
                                 federation's checksum (Want-Digest)
  testfed DATA_DIR --port PORT [...]
                                 serve DATA_DIR as a test federation
  install-helper [--prefix /sbin] [--uninstall]
                                 install /sbin/mount.davfed for mount(8) and fstab

  help [options|man]             every mount option with its default; the
                                 manual page davfed(8) (man 8 davfed once
                                 install-helper has run)

  davfed COMMAND --help for a command's options; davfed --version
  mount options: davfed help options
"""
