"""The bottom layer: small utilities every other layer may use, importing none of them.

- :mod:`odesde.utils.files`: atomic writes and file hashes.
- :mod:`odesde.utils.provenance`: where a result came from (commit, versions, machine, hashes).
- :mod:`odesde.utils.printed`: a computed value against a number as the paper prints it.
- :mod:`odesde.utils.background`: work in worker threads while the caller goes on.
"""
