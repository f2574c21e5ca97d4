"""The test federation: a Dynafed-compatible federation on loopback, for tests and benchmarks.

``davfed testfed DATA_DIR --port PORT`` (see ``cli.py``) serves DATA_DIR at
``http://127.0.0.1:PORT/myfed/``; every file is replicated on N storage
endpoints (real nginx for ``dav``; aiohttp servers checking pre-signed URLs for
``s3v2``/``s3v4``/``azure``). Tests drive it through :class:`TestFederation`,
which runs it in its own process::

    from davfed_testfed import TestFederation

    with TestFederation(data_dir, endpoints=3, kinds=None, prefix="/myfed", port=0,
                        health_period=0.2, max_latency=0.5) as fed:
        fed.url                       # "http://127.0.0.1:PORT/myfed/"
        fed.file_url("a/b c.txt")     # the same, for one file (percent-encoded)
        fed.endpoints                 # [EndpointHandle(index, name, kind, port, base_url,
                                      #                 access_log, disk_port), ...]
        fed.replica_url("a/b", 1)     # a URL a client could GET directly (signed if needed)
        fed.fault(0, "down")          # also slow(delay=), stall(after=), cut(after=),
                                      # status(status=), delete(path=), resize(path=, size=),
                                      # validity(seconds=); path= restricts most to one file
        fed.wait_health(0, online=False, timeout=5)
        fed.check_health()            # run a checker round now; [True, False, True]
        fed.clear_faults()            # or clear_faults(0)
        fed.bytes_sent(0)             # body bytes served by endpoint 0 so far
        fed.state(), fed.online()     # health and faults as the federation sees them
        # async (trio/asyncio) variants: afault, aclear_faults, await_health

HTTPS mode (``https=True``; see ``docs/testfed.md``): a real Apache httpd with
mod_ssl and mod_gridsite in front, a test PKI with grid proxies and tokens, and
Dynafed's authorization rules::

    with TestFederation(data_dir, https=True, pki=None, auth_rules=[
            "glb.allowgroups[]: /belle* /myfed/ rl"]) as fed:
        fed.url                       # "https://127.0.0.1:P/myfed/" (SSLVerifyClient require)
        fed.optional_url              # "https://127.0.0.1:Q/myfed/" (optional: tokens)
        fed.pki.ca_dir                # hashed CA dir (X509_CERT_DIR / --capath)
        fed.pki.proxy("alice")        # VOMS proxy file (voms-proxy-fake); voms=False:
                                      # grid-proxy-init; expired=True; out=path
        fed.pki.token("alice", groups=["/belle"])   # HS256 JWT for Authorization: Bearer
        fed.set_auth_rules([...]); fed.saw_authorization(0)

Constructor options: ``endpoints``, ``kinds`` (one per endpoint), ``prefix``,
``port``, ``health_period``, ``max_latency``, ``maxlistitems``,
``no_replica_status`` (404/503), ``second_hop`` (True or indices),
``geo_rank`` (one rank per endpoint, lowest first), ``shuffle``/``seed``,
``signature_validity``, ``sign_cache_ttl``, ``checksum_endpoints`` (indices of
the ``candochecksum`` endpoints; None: all), ``extra_args``, ``https``, ``pki``
(a ``TestPKI`` or its directory; None: a new one), ``auth_rules`` (lines or a
file), ``optional_port``.

Module map: ``cli`` (command line), ``server`` (lifecycle, replica choice),
``frontend`` (the Dynafed front end), ``propfind``/``metalink``/``pages``
(what it writes), ``namespace`` (DATA_DIR as a federation), ``health``
(checker, ordering), ``storage`` (signed endpoints, fault server), ``nginx``
(dav endpoints), ``signing``, ``ranges``, ``faults``, ``control`` (the
control API), ``handle`` (this handle); HTTPS mode: ``apache`` (Apache httpd),
``auth`` (identity, VOMS ACs, rules), ``pki`` (test CA, proxies), ``tokens``.
``docs/testfed.md`` has the details.
"""

from davfed_testfed.faults import FAULT_KINDS
from davfed_testfed.handle import EndpointHandle, TestFederation, TestFedError

__all__ = ["FAULT_KINDS", "EndpointHandle", "TestFedError", "TestFederation"]
