"""UCF101 (101 actions, one middle frame per video): ``ucf101/UCF-101-midframes/<Renamed_Action>/<video>.jpg``."""
import os
import re
from typing import Dict, Tuple

from dassl.data.datasets import DATASET_REGISTRY

from .common import Split, SplitDataset, make_datum, split_trainval


def split_camel_case(action: str) -> str:
    """``ApplyEyeMakeup`` -> ``Apply_Eye_Makeup``, ``YoYo`` -> ``Yo_Yo`` (folder and class name)."""
    return "_".join(re.findall("[A-Z][^A-Z]*", action))


@DATASET_REGISTRY.register()
class UCF101(SplitDataset):
    dataset_dir = "ucf101"
    image_dir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"

    def generate_split(self) -> Tuple[Split, Split, Split]:
        """Labels from ``classInd.txt`` (1-based ids); split 1 of ``trainlist01.txt`` / ``testlist01.txt``."""
        list_dir = os.path.join(self.dataset_dir, "ucfTrainTestlist")
        action2label = {}
        with open(self.require_annotation(os.path.join(list_dir, "classInd.txt"))) as f:
            for line in f:
                if line.strip():
                    class_id, action = line.strip().split(" ")
                    action2label[action] = int(class_id) - 1
        trainval = self.read_list(action2label, os.path.join(list_dir, "trainlist01.txt"))
        test = self.read_list(action2label, os.path.join(list_dir, "testlist01.txt"))
        train, val = split_trainval(trainval, p_val=0.2)
        return train, val, test

    def read_list(self, action2label: Dict[str, int], list_file: str) -> Split:
        """Lines ``<Action>/<video>.avi[ <label>]`` -> the middle frame ``<Renamed_Action>/<video>.jpg``."""
        items = []
        with open(self.require_annotation(list_file)) as f:
            for line in f:
                if not line.strip():
                    continue
                action, video = line.strip().split(" ")[0].split("/")
                if action not in action2label:
                    raise self.source.invalid("list", list_file, f"names action {action!r}, not in classInd.txt")
                renamed = split_camel_case(action)
                impath = os.path.join(self.image_dir, renamed, video.split(".")[0] + ".jpg")
                listed_in = os.path.basename(list_file)
                items.append(make_datum(impath, action2label[action], renamed, self.source, listed_in))
        return items
