"""A HEP analysis job, run by ``bench/hep.py`` as its own process: uproot reads a TTree.

``python bench/hepjob.py FILE --full a,b,c --scattered d --ranges 0:100,5000:5100``
reads the ``--full`` branches for every entry and the ``--scattered`` branch for each
entry range, the way an analysis job does (``uproot.open`` of a path: memory-mapped
reads, as for any local file). Prints one JSON object: ``seconds`` (open to last
array), ``cpu_s`` (this process), ``entries``, ``digest`` (sha256 of every array read,
in order: the same bytes from every path give the same digest).

``python bench/hepjob.py FILE --write ENTRIES`` writes the benchmark's ROOT file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import time
from typing import Any

#: The TTree's branches: name -> numpy dtype. Floats of detector-like distributions
#: (compress little), small integers (compress well), as in an analysis ntuple.
BRANCHES = {
    "px": "f8", "py": "f8", "pz": "f8", "energy": "f8",
    "eta": "f4", "phi": "f4", "chi2": "f4", "mass": "f4",
    "charge": "i4", "nhits": "i4",
}  # fmt: skip
TREE = "Events"
#: Entries per basket: one basket per branch per ``extend`` call, as ROOT flushes them.
BASKET_ENTRIES = 10_000


def write(path: str, entries: int, seed: int = 12) -> None:
    import numpy as np
    import uproot

    rng = np.random.default_rng(seed)
    with uproot.recreate(path, compression=uproot.ZLIB(1)) as f:
        tree = f.mktree(TREE, dict(BRANCHES))
        done = 0
        while done < entries:
            n = min(BASKET_ENTRIES, entries - done)
            chunk: dict[str, Any] = {}
            for name, dtype in BRANCHES.items():
                if dtype == "i4":
                    high = 3 if name == "charge" else 60
                    chunk[name] = rng.integers(0, high, n, dtype=np.int32)
                elif dtype == "f8":
                    chunk[name] = rng.normal(0.0, 10.0, n)
                else:
                    chunk[name] = rng.normal(0.0, 2.0, n).astype(np.float32)
            tree.extend(chunk)
            done += n


def job(
    path: str, full: list[str], scattered: str, ranges: list[tuple[int, int]]
) -> dict[str, Any]:
    import uproot

    digest = hashlib.sha256()
    t0 = time.perf_counter()
    with uproot.open(path) as f:
        tree = f[TREE]
        arrays = tree.arrays(full, library="np")
        for name in full:
            digest.update(arrays[name].tobytes())
        for start, stop in ranges:
            digest.update(tree[scattered].array(entry_start=start, entry_stop=stop, library="np"))
        entries = int(tree.num_entries)
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": round(seconds, 4),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "entries": entries,
        "digest": digest.hexdigest(),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hepjob")
    p.add_argument("file")
    p.add_argument("--write", type=int, metavar="ENTRIES")
    p.add_argument("--full", default="")
    p.add_argument("--scattered", default="")
    p.add_argument("--ranges", default="")
    args = p.parse_args(argv)
    if args.write:
        write(args.file, args.write)
        return 0
    ranges = [(int(a), int(b)) for a, b in (r.split(":") for r in args.ranges.split(",") if r)]
    print(json.dumps(job(args.file, args.full.split(","), args.scattered, ranges)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
