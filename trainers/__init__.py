"""Trainer modules. Importing this package registers every trainer in ``TRAINER_REGISTRY``.

Every module in this folder is imported here automatically, so a new trainer file is registered
as soon as it exists (no import line to forget). A file that fails to import (or registers a name
that is taken) is skipped with one ``warning:`` line naming it; the others still work. The library's
own modules load first, so a dropped-in duplicate can never displace them.
"""
from common.modules import import_package_modules

LIBRARY_MODULES = (
    "config", "shared", "hicropl", "zsclip",
    "coop", "cocoop", "kgcoop", "tcp", "linear_probe", "ivlp", "maple", "promptsrc", "mma", "coprompt",
)

import_package_modules(__name__, __path__, first=LIBRARY_MODULES)
