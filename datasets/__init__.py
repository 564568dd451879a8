"""Dataset modules. Importing this package registers every dataset in ``DATASET_REGISTRY``.

Every module in this folder is imported here automatically, so a new dataset file is registered
as soon as it exists (no import line to forget). A file that fails to import (or registers a name
that is taken) is skipped with one ``warning:`` line naming it; the others still work. The library's
own modules load first, so a dropped-in duplicate can never displace them.
"""
from common.modules import import_package_modules

LIBRARY_MODULES = (
    "common", "caltech101", "dtd", "eurosat", "fgvc_aircraft", "food101", "imagenet", "imagenet_a", "imagenet_r",
    "imagenet_sketch", "imagenetv2", "oxford_flowers", "oxford_pets", "stanford_cars", "sun397", "toy_shapes",
    "ucf101",
)

import_package_modules(__name__, __path__, first=LIBRARY_MODULES)
