"""Description loader: file lookup by dataset name, exact class-name keys, coverage and context-length errors."""
import json

import pytest

from descriptions import DESCRIPTIONS_DIR, FALLBACK_TEMPLATE, description_file, load_descriptions

TOY_CLASSES = ["circle", "square", "triangle", "star", "hexagon", "cross", "ring", "crescent", "pentagon", "arrow"]


def write(tmp_path, table, name="d.json"):
    path = tmp_path / name
    path.write_text(json.dumps(table), encoding="utf-8")
    return path


def test_description_file_mapping():
    expected = {
        "ImageNet": "imagenet", "ImageNetV2": "imagenet", "ImageNetSketch": "imagenet", "ImageNetA": "imagenet",
        "ImageNetR": "imagenet", "Caltech101": "caltech101", "OxfordPets": "oxford_pets",
        "StanfordCars": "stanford_cars", "OxfordFlowers": "oxford_flowers", "Food101": "food101",
        "FGVCAircraft": "fgvc_aircraft", "SUN397": "sun397", "DescribableTextures": "dtd", "EuroSAT": "eurosat",
        "UCF101": "ucf101", "ToyShapes": "toy_shapes",
    }
    for dataset, key in expected.items():
        assert description_file(dataset) == DESCRIPTIONS_DIR / f"{key}.json"
    with pytest.raises(ValueError, match="TRAINER.HICROPL.DESCRIPTIONS"):
        description_file("MyDataset")


def test_keys_are_classnames_with_underscores_as_spaces(tmp_path):
    path = write(tmp_path, {"Apply Eye Makeup": ["s1", "s2"], "Yo Yo": ["s3"], "apply eye makeup": ["wrong case"]})
    assert load_descriptions(path, ["Yo_Yo", "Apply_Eye_Makeup"]) == [["s3"], ["s1", "s2"]]


def test_duplicates_kept_and_label_order(tmp_path):
    path = write(tmp_path, {"b": ["x", "x", "y"], "a": ["z"]})
    assert load_descriptions(path, ["a", "b", "a"]) == [["z"], ["x", "x", "y"], ["z"]]


def test_every_missing_class_in_one_error(tmp_path):
    path = write(tmp_path, {"cat": ["a cat."], "Dog": ["a dog."], "empty": []})
    with pytest.raises(ValueError) as info:
        load_descriptions(path, ["cat", "dog", "fish_tank", "empty"])
    message = str(info.value)
    assert "3 of 4" in message
    for key in ("'dog'", "'fish tank'", "'empty'"):
        assert key in message


def test_fallback_names_the_missing_classes(tmp_path, capsys):
    path = write(tmp_path, {"cat": ["a cat."]})
    result = load_descriptions(path, ["cat", "fish_tank"], fallback=True)
    assert result == [["a cat."], [FALLBACK_TEMPLATE.format("fish tank")]]
    assert "'fish tank'" in capsys.readouterr().out


def test_sentence_too_long_names_class_and_sentence(tmp_path):
    long_sentence = "a very " + "very " * 80 + "long sentence."
    path = write(tmp_path, {"cat": ["ok.", long_sentence], "dog": ["fine."]})
    with pytest.raises(ValueError, match="77-token") as info:
        load_descriptions(path, ["cat", "dog"])
    assert "'cat'" in str(info.value) and "long sentence." in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_descriptions(tmp_path / "nope.json", ["cat"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_descriptions(bad, ["cat"])
    with pytest.raises(ValueError, match="list of non-empty strings"):
        load_descriptions(write(tmp_path, {"cat": "a cat."}), ["cat"])


def test_toy_shapes_file():
    sentences = load_descriptions(description_file("ToyShapes"), TOY_CLASSES)
    table = json.loads(description_file("ToyShapes").read_text(encoding="utf-8"))
    assert set(table) == set(TOY_CLASSES)
    for group in sentences:
        assert len(set(group)) >= 5
