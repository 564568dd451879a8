"""Project-wide helpers that our datasets, trainers, descriptions and scripts share.

They live here, not under ``dassl``, so that those modules import from ``dassl`` only the names that the real
Dassl.pytorch has (``../shared/DASSL_API.md``) and run unchanged on it. ``dassl`` never imports this package.
"""
