"""EuroSAT (10 land-use classes): ``eurosat/2750/<Class>/<Class>_<n>.jpg``."""
from typing import Tuple

from dassl.data.datasets import DATASET_REGISTRY

from .common import Split, SplitDataset, read_and_split_data

# Folder name -> descriptive class name used in prompts.
NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@DATASET_REGISTRY.register()
class EuroSAT(SplitDataset):
    dataset_dir = "eurosat"
    image_dir = "2750"
    split_file = "split_zhou_EuroSAT.json"

    def generate_split(self) -> Tuple[Split, Split, Split]:
        return read_and_split_data(self.image_dir, self.source, new_cnames=NEW_CNAMES)
