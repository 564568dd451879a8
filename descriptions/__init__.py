"""Class descriptions: which file belongs to a dataset, and loading it for a list of class names.

A description file is a JSON object ``{class name: [sentence, ...]}`` (the CoPrompt / HiCroPL ``gpt_file`` format),
keyed by the dataset loader's class name with every ``_`` replaced by a space, original casing kept
(e.g. ``"Apply Eye Makeup"``, ``"2012 Audi TTS Coupe"``). The frozen text classifier W of HiCroPL (SPEC §4.2) is the
normalised mean of the CLIP text features of a class's sentences.
"""
import json
from pathlib import Path
from typing import Dict, List, Sequence, Union

from common.errors import UserError

DESCRIPTIONS_DIR = Path(__file__).resolve().parent

# DATASET.NAME -> description file stem. The four ImageNet variants use the ImageNet classes, so the ImageNet file.
DATASET_KEYS: Dict[str, str] = {
    "ImageNet": "imagenet",
    "ImageNetV2": "imagenet",
    "ImageNetSketch": "imagenet",
    "ImageNetA": "imagenet",
    "ImageNetR": "imagenet",
    "Caltech101": "caltech101",
    "OxfordPets": "oxford_pets",
    "StanfordCars": "stanford_cars",
    "OxfordFlowers": "oxford_flowers",
    "Food101": "food101",
    "FGVCAircraft": "fgvc_aircraft",
    "SUN397": "sun397",
    "DescribableTextures": "dtd",
    "EuroSAT": "eurosat",
    "UCF101": "ucf101",
    "ToyShapes": "toy_shapes",
}

# Sentence used for a class that has no description when the caller allows a fallback.
FALLBACK_TEMPLATE = "a photo of a {}."


def description_file(dataset_name: str) -> Path:
    """Path of the shipped description file for a registered dataset name (``cfg.DATASET.NAME``)."""
    if dataset_name not in DATASET_KEYS:
        raise UserError(
            f"no description file is shipped for dataset {dataset_name!r} (known: {', '.join(sorted(DATASET_KEYS))}); "
            "point TRAINER.HICROPL.DESCRIPTIONS at your own {class name: [sentence, ...]} JSON file"
        )
    return DESCRIPTIONS_DIR / f"{DATASET_KEYS[dataset_name]}.json"


def description_key(classname: str) -> str:
    """Key of a class in a description file: the loader's class name with ``_`` -> space (exact otherwise)."""
    return classname.replace("_", " ")


def load_descriptions(
    path: Union[str, Path], classnames: Sequence[str], fallback: bool = False
) -> List[List[str]]:
    """Sentences of every class, in label order: ``result[label] = [sentence, ...]`` (at least one each).

    Lookup is exact and case-sensitive on ``description_key(classname)``; duplicate sentences are kept (they weigh
    more in the average, as in the released code). Every class must be covered: all missing classes are reported in
    one error, or, with ``fallback=True``, get the single sentence ``FALLBACK_TEMPLATE`` and are named in a printed
    note. Every sentence must fit CLIP's 77-token context (checked with ``clip.tokenize``).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"description file {path} does not exist; write one ({{class name: [sentence, ...]}}) or set "
            "TRAINER.HICROPL.DESCRIPTIONS to an existing file"
        )
    with open(path, encoding="utf-8") as f:
        try:
            table = json.load(f)
        except json.JSONDecodeError as e:
            raise UserError(f"description file {path} is not valid JSON: {e}") from None
    if not isinstance(table, dict):
        raise UserError(f"description file {path} must hold a JSON object {{class name: [sentence, ...]}}")

    sentences: List[List[str]] = []
    missing: List[str] = []
    for name in classnames:
        key = description_key(name)
        entry = table.get(key)
        if entry is None or (isinstance(entry, list) and len(entry) == 0):
            missing.append(key)
            sentences.append([FALLBACK_TEMPLATE.format(key)])
            continue
        if not isinstance(entry, list) or not all(isinstance(s, str) and s.strip() for s in entry):
            raise UserError(f"{path}: the value of class {key!r} must be a list of non-empty strings")
        sentences.append(list(entry))

    if missing and not fallback:
        raise UserError(
            f"{path} has no descriptions for {len(missing)} of {len(classnames)} classes: "
            + ", ".join(repr(k) for k in missing)
            + " (add them to the file, or set TRAINER.HICROPL.DESCRIPTIONS_FALLBACK True to describe them as "
            + repr(FALLBACK_TEMPLATE)
            + ")"
        )
    if missing:
        print(
            f"Descriptions: {len(missing)} of {len(classnames)} classes are missing from {path}; using "
            f"{FALLBACK_TEMPLATE!r} for: " + ", ".join(repr(k) for k in missing)
        )
    _check_context_length(path, classnames, sentences)
    return sentences


def too_long_for_context(texts: Sequence[str]) -> List[int]:
    """Indices of the texts that do not fit CLIP's 77-token context once tokenised (SOT and EOT included)."""
    import clip  # the repo's CLIP package; imported here so that description_file() needs no torch

    try:
        clip.tokenize(list(texts))
        return []
    except ValueError:
        pass
    bad = []
    for i, text in enumerate(texts):
        try:
            clip.tokenize([text])
        except ValueError:
            bad.append(i)
    return bad


def _check_context_length(path: Path, classnames: Sequence[str], sentences: List[List[str]]) -> None:
    """Raise one error naming every (class, sentence) that does not fit CLIP's context once tokenised."""
    flat = [(name, s) for name, group in zip(classnames, sentences) for s in group]
    bad = too_long_for_context([s for _, s in flat])
    if bad:
        listed = "; ".join(f"{description_key(flat[i][0])!r}: {flat[i][1]!r}" for i in bad)
        raise UserError(f"{path}: {len(bad)} sentence(s) do not fit CLIP's 77-token context (shorten them): {listed}")
