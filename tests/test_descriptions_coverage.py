"""The shipped description files cover every class of all 15 datasets with usable sentences (SPEC §4.2, §9).

HiCroPL looks each class up by exact key (class name with "_" -> " ", casing kept; a missing key is a KeyError)
and tokenizes every sentence to CLIP's 77-token context without truncation, so each class needs its entry and
every sentence must fit. The label-ordered class lists come from the shared facts folder next to the repository
(`<repo>/../shared/classnames`); the test is skipped where that folder is absent.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[1]
CLASSNAMES = REPO.parent / "shared" / "classnames"
MIN_DISTINCT = 5
CONTEXT = 77

# DATASET.NAME -> description file key (descriptions/<key>.json); the ImageNet variants share imagenet.json.
DESCRIPTION_KEY = {
    "ImageNet": "imagenet", "ImageNetV2": "imagenet", "ImageNetSketch": "imagenet", "ImageNetA": "imagenet",
    "ImageNetR": "imagenet", "Caltech101": "caltech101", "OxfordPets": "oxford_pets",
    "StanfordCars": "stanford_cars", "OxfordFlowers": "oxford_flowers", "Food101": "food101",
    "FGVCAircraft": "fgvc_aircraft", "SUN397": "sun397", "DescribableTextures": "dtd", "EuroSAT": "eurosat",
    "UCF101": "ucf101",
}

pytestmark = pytest.mark.skipif(not CLASSNAMES.is_dir(), reason=f"class lists not found at {CLASSNAMES}")


def class_keys(dataset: str) -> List[str]:
    """Description keys of a dataset in label order (ImageNet-family lines are '<wnid> <name>')."""
    keys = []
    for line in (CLASSNAMES / f"{dataset}.txt").read_text(encoding="utf-8").splitlines():
        name = line.split(" ", 1)[1] if dataset.startswith("ImageNet") else line
        keys.append(name.replace("_", " "))
    return keys


@lru_cache(maxsize=None)
def load(key: str) -> Dict[str, List[str]]:
    path = REPO / "descriptions" / f"{key}.json"
    assert path.is_file(), f"{path} is missing"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} must hold one JSON object"
    return data


@lru_cache(maxsize=None)
def too_long(key: str) -> Dict[str, List[int]]:
    """Per class, the token counts (SOT and EOT included) of the sentences that exceed CLIP's context."""
    from clip import tokenize

    data = load(key)
    flat = [(cls, s) for cls, sentences in data.items() if isinstance(sentences, list) for s in sentences
            if isinstance(s, str)]
    # One spare position: a sentence longer than 77 tokens is cut to 78 and ends in EOT, the largest id.
    lengths = (tokenize([s for _, s in flat], context_length=CONTEXT + 1, truncate=True).argmax(-1) + 1).tolist()
    bad: Dict[str, List[int]] = {}
    for (cls, _), n in zip(flat, lengths):
        if n > CONTEXT:
            bad.setdefault(cls, []).append(n)
    return bad


@pytest.mark.parametrize("dataset", sorted(DESCRIPTION_KEY))
def test_every_class_has_usable_descriptions(dataset):
    key = DESCRIPTION_KEY[dataset]
    data = load(key)
    keys = class_keys(dataset)
    assert keys, f"empty class list for {dataset}"
    missing = [k for k in keys if k not in data]
    assert not missing, f"descriptions/{key}.json lacks {len(missing)} {dataset} classes, e.g. {missing[:5]}"
    for k in keys:
        sentences = data[k]
        assert isinstance(sentences, list) and all(isinstance(s, str) for s in sentences), \
            f"{key}.json[{k!r}] must be a list of strings"
        distinct = {s.strip() for s in sentences if s.strip()}
        assert len(distinct) >= MIN_DISTINCT, \
            f"{key}.json[{k!r}] has {len(distinct)} distinct non-empty sentences, need >= {MIN_DISTINCT}"
        assert all(s.strip() for s in sentences), f"{key}.json[{k!r}] has an empty sentence"
    bad = {k: n for k, n in too_long(key).items() if k in set(keys)}
    assert not bad, f"{key}.json sentences longer than {CONTEXT} CLIP tokens: {dict(list(bad.items())[:5])}"
