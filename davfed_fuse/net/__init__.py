"""The network: HTTP rules, WebDAV, signed URLs, proxies, credentials, the ranged-GET transport
and the federation's replica policy. Nothing here knows FUSE or the cache."""
