"""Oxford-IIIT Pets (37 breeds): ``oxford_pets/images/<Breed>_<n>.jpg`` + ``annotations/{trainval,test}.txt``."""
import os
from typing import Tuple

from dassl.data.datasets import DATASET_REGISTRY

from .common import Split, SplitDataset, make_datum, split_trainval


@DATASET_REGISTRY.register()
class OxfordPets(SplitDataset):
    dataset_dir = "oxford_pets"
    image_dir = "images"
    split_file = "split_zhou_OxfordPets.json"

    def generate_split(self) -> Tuple[Split, Split, Split]:
        annotation_dir = os.path.join(self.dataset_dir, "annotations")
        trainval = self.read_annotations(os.path.join(annotation_dir, "trainval.txt"))
        test = self.read_annotations(os.path.join(annotation_dir, "test.txt"))
        train, val = split_trainval(trainval, p_val=0.2)
        return train, val, test

    def read_annotations(self, list_file: str) -> Split:
        """Lines ``<image stem> <class id 1..37> <species> <breed id>``; classname = stem minus ``_<n>``, lowercased."""
        self.require_annotation(list_file)
        items = []
        with open(list_file) as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                stem, class_id = line.split(" ")[:2]
                breed = "_".join(stem.split("_")[:-1]).lower()
                impath = os.path.join(self.image_dir, stem + ".jpg")
                items.append(make_datum(impath, int(class_id) - 1, breed, self.source, os.path.basename(list_file)))
        return items
