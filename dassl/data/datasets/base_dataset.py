"""``Datum`` (one labelled image) and ``DatasetBase`` (train_x/train_u/val/test lists of Datum).

The class path ``dassl.data.datasets.base_dataset.Datum`` and its attribute names ``_impath``,
``_label``, ``_domain``, ``_classname`` are part of the on-disk format: few-shot caches
(``split_fewshot/shot_K-seed_S.pkl``) and ImageNet's ``preprocessed.pkl`` pickle Datum objects, and
they stay interchangeable with caches written by the original Dassl.
"""
import random
from collections import defaultdict
from typing import Dict, List, Optional, Tuple, Union

from dassl.utils import check_isfile

__all__ = ["Datum", "DatasetBase"]


class Datum:
    """One sample: image path, integer label, domain index and class name (read-only properties).

    The image file must exist when the Datum is created.
    """

    def __init__(self, impath: str = "", label: int = 0, domain: int = 0, classname: str = "") -> None:
        assert isinstance(impath, str), f"impath must be a str, got {type(impath).__name__}"
        assert check_isfile(impath), f'No file found at "{impath}"'
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname

    @property
    def impath(self) -> str:
        return self._impath

    @property
    def label(self) -> int:
        return self._label

    @property
    def domain(self) -> int:
        return self._domain

    @property
    def classname(self) -> str:
        return self._classname

    def __repr__(self) -> str:
        return (f"Datum(impath={self._impath!r}, label={self._label}, domain={self._domain}, "
                f"classname={self._classname!r})")


class DatasetBase:
    """A dataset = lists of ``Datum``: ``train_x`` (labelled), ``train_u`` (unlabelled), ``val``, ``test``.

    ``num_classes``, ``lab2cname`` and ``classnames`` are derived from ``train_x``. Subclasses set
    ``dataset_dir`` (folder name under ``DATASET.ROOT``), build the lists in ``__init__(cfg)`` and call
    ``super().__init__(train_x=..., val=..., test=...)``.
    """

    dataset_dir = ""  # folder of the dataset under DATASET.ROOT
    domains: List[str] = []  # domain names (domain-generalisation datasets only)

    def __init__(
        self,
        train_x: Optional[List[Datum]] = None,
        train_u: Optional[List[Datum]] = None,
        val: Optional[List[Datum]] = None,
        test: Optional[List[Datum]] = None,
    ) -> None:
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        self._num_classes = self.get_num_classes(train_x)
        self._lab2cname, self._classnames = self.get_lab2cname(train_x)

    @property
    def train_x(self) -> Optional[List[Datum]]:
        return self._train_x

    @property
    def train_u(self) -> Optional[List[Datum]]:
        return self._train_u

    @property
    def val(self) -> Optional[List[Datum]]:
        return self._val

    @property
    def test(self) -> Optional[List[Datum]]:
        return self._test

    @property
    def lab2cname(self) -> Dict[int, str]:
        return self._lab2cname

    @property
    def classnames(self) -> List[str]:
        """Class names ordered by ascending label."""
        return self._classnames

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source: List[Datum]) -> int:
        """``max(label) + 1``."""
        return max(item.label for item in data_source) + 1

    @staticmethod
    def get_lab2cname(data_source: List[Datum]) -> Tuple[Dict[int, str], List[str]]:
        """``({label: classname}, [classname ordered by label])`` of the labels present in ``data_source``."""
        mapping = {item.label: item.classname for item in data_source}
        labels = sorted(mapping.keys())
        return mapping, [mapping[label] for label in labels]

    def split_dataset_by_label(self, data_source: List[Datum]) -> Dict[int, List[Datum]]:
        """``{label: [Datum, ...]}`` with labels in first-appearance order and items in input order."""
        output = defaultdict(list)
        for item in data_source:
            output[item.label].append(item)
        return output

    def split_dataset_by_domain(self, data_source: List[Datum]) -> Dict[int, List[Datum]]:
        """``{domain: [Datum, ...]}`` with domains in first-appearance order and items in input order."""
        output = defaultdict(list)
        for item in data_source:
            output[item.domain].append(item)
        return output

    def generate_fewshot_dataset(
        self, *data_sources: List[Datum], num_shots: int = -1, repeat: bool = False
    ) -> Union[List[Datum], List[List[Datum]], Tuple[List[Datum], ...]]:
        """Keep ``num_shots`` items per class of each source.

        ``num_shots < 1`` -> the input is returned unchanged (one list if one source, else the tuple).
        Per source, per label in first-appearance order: ``random.sample(items, num_shots)`` if the class
        has enough items, else ``random.choices(items, k=num_shots)`` if ``repeat``, else all its items.
        Uses Python's global ``random`` (seeded by ``set_random_seed``), in exactly this call order, so
        the same seed reproduces the original Dassl's few-shot subsets. Returns one list if one source,
        else a list of lists.
        """
        if num_shots < 1:
            if len(data_sources) == 1:
                return data_sources[0]
            return data_sources

        print(f"Creating a {num_shots}-shot dataset")
        output = []
        for data_source in data_sources:
            tracker = self.split_dataset_by_label(data_source)
            dataset = []
            for items in tracker.values():
                if len(items) >= num_shots:
                    sampled_items = random.sample(items, num_shots)
                elif repeat:
                    sampled_items = random.choices(items, k=num_shots)
                else:
                    sampled_items = items
                dataset.extend(sampled_items)
            output.append(dataset)

        if len(output) == 1:
            return output[0]
        return output
