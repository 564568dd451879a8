"""ToyShapes: a built-in 10-class dataset of drawn shapes for demos and tests (no download needed).

Generated once into ``<DATASET.ROOT>/toy_shapes/``::

    images/<class>/<nnnn>.png     64x64 RGB: one filled shape in its class colour on a grey-ish background
    split_toy_shapes.json         split_zhou format, paths relative to images/
    GENERATOR                     which version of this generator drew the images (see ``GENERATOR_VERSION``)

Per class 24 train / 8 val / 12 test images. Size, position and rotation are random; the background is a random
low-saturation tone, dark or light, so the shape always stands out.

Colour is a class cue on purpose: every class has its own foreground hue (``CLASS_COLOURS``, ten hues around the
colour wheel, with a small per-image jitter of hue, saturation and value). The demo and the tests run a CLIP with
random weights (``random:tiny``), whose frozen features keep the colour of an image but not the outline of a
shape, so with colour alone varying per class they can still show that training lifts accuracy far above chance.
The base classes (labels 0-4) and the novel ones (5-9) each alternate around the wheel, so both halves are
separable. Accuracy on ToyShapes therefore says nothing about shape recognition; it checks the pipeline.

Generation is deterministic (its own ``random.Random`` with a fixed seed, so it neither depends on nor consumes
the global ``random`` that ``SEED`` controls) and atomic: everything is written into a temp folder beside the
target, which is then renamed into place, so interrupted runs never leave a half-written dataset; concurrent runs
wait for the first one (a lock on the parent folder), and files and folders get the caller's umask. A folder drawn
by another generator version (e.g. the first one, whose colours were random) is reported with a one-line error
asking to delete it, never silently mixed with new images. After generation it behaves like every other split-file
dataset (few-shot cache, base/new = 5/5 classes).
"""
from __future__ import annotations

import colorsys
import math
import os
import random
from typing import List, Sequence, Tuple

from PIL import Image, ImageDraw

from common.files import folder_lock, make_shared_temp_dir
from dassl.data.datasets import DATASET_REGISTRY

from .common import SplitDataset, write_json_atomic

#: label order (label i = CLASSNAMES[i])
CLASSNAMES = ("circle", "square", "triangle", "star", "hexagon", "cross", "ring", "crescent", "pentagon", "arrow")
#: class -> (colour name used in descriptions/toy_shapes.json, hue in degrees). Base classes red, yellow, green,
#: sky blue, purple and novel classes orange, lime, teal, blue, magenta interleave around the wheel (>= 27 deg apart).
CLASS_COLOURS = {
    "circle": ("red", 0.0), "square": ("yellow", 55.0), "triangle": ("green", 125.0), "star": ("sky blue", 200.0),
    "hexagon": ("purple", 280.0), "cross": ("orange", 28.0), "ring": ("lime", 88.0), "crescent": ("teal", 165.0),
    "pentagon": ("blue", 235.0), "arrow": ("magenta", 315.0),
}
HUE_JITTER = 5.0  # degrees, either way: well under half the smallest gap between two class hues
FOREGROUND_SATURATION = (0.7, 1.0)
FOREGROUND_VALUE = (0.75, 1.0)
BACKGROUND_SATURATION = (0.0, 0.15)  # grey-ish, so the background never carries a class hue
BACKGROUND_VALUES = ((0.05, 0.3), (0.75, 0.95))  # dark or light, chosen at random per image
SPLIT_SIZES = {"train": 24, "val": 8, "test": 12}  # images per class
IMAGE_SIZE = 64
GENERATION_SEED = 20250825  # fixed: the dataset is the same on every machine, whatever SEED a run uses
GENERATOR_VERSION = "2"  # bump whenever the drawn images change; 1 = random colours (no marker file)
GENERATOR_FILE = "GENERATOR"
SUPERSAMPLE = 4  # draw at 4x and downscale, for anti-aliased edges

Point = Tuple[float, float]
RGB = Tuple[int, int, int]


def _regular_polygon(n: int, radius: float, phase: float = -math.pi / 2) -> List[Point]:
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _outline(shape: str, r: float) -> List[Point]:
    """Polygon of ``shape`` centred at the origin with circumradius about ``r`` (for the polygon shapes)."""
    if shape == "square":
        return _regular_polygon(4, r, math.pi / 4)
    if shape == "triangle":
        return _regular_polygon(3, r)
    if shape == "pentagon":
        return _regular_polygon(5, r)
    if shape == "hexagon":
        return _regular_polygon(6, r)
    if shape == "star":
        outer, inner = _regular_polygon(5, r), _regular_polygon(5, 0.42 * r, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "cross":
        w = 0.3 * r
        return [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w),
                (-w, -w)]
    if shape == "arrow":
        shaft, head = 0.22 * r, 0.65 * r
        return [(-r, -shaft), (0.15 * r, -shaft), (0.15 * r, -head), (r, 0.0), (0.15 * r, head), (0.15 * r, shaft),
                (-r, shaft)]
    raise ValueError(f"unknown shape {shape!r}")


def _hsv(hue_degrees: float, saturation: float, value: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb((hue_degrees / 360.0) % 1.0, saturation, value)
    return (round(255 * r), round(255 * g), round(255 * b))


def class_colour(shape: str, rng: random.Random) -> RGB:
    """The foreground colour of one image of ``shape``: its class hue, jittered slightly."""
    hue = CLASS_COLOURS[shape][1] + rng.uniform(-HUE_JITTER, HUE_JITTER)
    return _hsv(hue, rng.uniform(*FOREGROUND_SATURATION), rng.uniform(*FOREGROUND_VALUE))


def background_colour(rng: random.Random) -> RGB:
    """A random dark or light low-saturation tone (any hue, too little saturation to look like a class colour)."""
    value_range = rng.choice(BACKGROUND_VALUES)
    return _hsv(rng.uniform(0.0, 360.0), rng.uniform(*BACKGROUND_SATURATION), rng.uniform(*value_range))


def draw_shape(shape: str, rng: random.Random) -> Image.Image:
    """One 64x64 RGB image of ``shape`` in its class colour, random background tone, size, position, rotation."""
    background = background_colour(rng)
    foreground = class_colour(shape, rng)
    size = IMAGE_SIZE * SUPERSAMPLE
    r = rng.uniform(0.22, 0.4) * size
    cx, cy = rng.uniform(r + 2, size - r - 2), rng.uniform(r + 2, size - r - 2)
    angle = rng.uniform(0, 2 * math.pi)
    cos_a, sin_a = math.cos(angle), math.sin(angle)

    def place(points: Sequence[Point]) -> List[Point]:
        return [(cx + x * cos_a - y * sin_a, cy + x * sin_a + y * cos_a) for x, y in points]

    def disc(x: float, y: float, radius: float) -> List[float]:
        return [x - radius, y - radius, x + radius, y + radius]

    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse(disc(cx, cy, r), fill=foreground)
    elif shape == "ring":
        draw.ellipse(disc(cx, cy, r), fill=foreground)
        draw.ellipse(disc(cx, cy, 0.58 * r), fill=background)
    elif shape == "crescent":
        draw.ellipse(disc(cx, cy, r), fill=foreground)
        (bx, by), = place([(0.45 * r, 0.0)])  # the bite: a background disc shifted along the rotation angle
        draw.ellipse(disc(bx, by, 0.85 * r), fill=background)
    else:
        draw.polygon(place(_outline(shape, r)), fill=foreground)
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)


def generate_toy_shapes(target_dir: str, split_file: str) -> None:
    """Create ``target_dir`` (images, split file, generator marker) atomically, with the caller's umask; a no-op if
    another run already created it (parallel runs wait for the first one under a lock of the parent folder)."""
    parent = os.path.dirname(os.path.abspath(target_dir))
    with folder_lock(parent), make_shared_temp_dir(target_dir) as tmp_dir:
        if os.path.isdir(target_dir):  # created by another run while this one waited for the lock
            return
        rng = random.Random(GENERATION_SEED)
        split = {name: [] for name in SPLIT_SIZES}
        per_class = sum(SPLIT_SIZES.values())
        for label, shape in enumerate(CLASSNAMES):
            os.makedirs(os.path.join(tmp_dir, "images", shape))
            for index in range(per_class):
                relpath = f"{shape}/{index:04d}.png"
                draw_shape(shape, rng).save(os.path.join(tmp_dir, "images", relpath))
                # first 24 -> train, next 8 -> val, last 12 -> test
                bound = 0
                for split_name, count in SPLIT_SIZES.items():
                    bound += count
                    if index < bound:
                        split[split_name].append([relpath, label, shape])
                        break
        write_json_atomic(split, os.path.join(tmp_dir, split_file))
        with open(os.path.join(tmp_dir, GENERATOR_FILE), "w", encoding="utf-8") as f:  # inside the temp dir
            f.write(GENERATOR_VERSION + "\n")
        os.rename(tmp_dir, target_dir)


def generator_version(dataset_dir: str) -> str:
    """The generator version recorded in ``dataset_dir`` ("1" for folders from before the marker existed)."""
    path = os.path.join(dataset_dir, GENERATOR_FILE)
    if not os.path.isfile(path):
        return "1"
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


@DATASET_REGISTRY.register()
class ToyShapes(SplitDataset):
    """10 drawn-shape classes (``CLASSNAMES``), generated on first use under ``DATASET.ROOT/toy_shapes``."""

    dataset_dir = "toy_shapes"
    image_dir = "images"
    split_file = "split_toy_shapes.json"

    def prepare(self, root: str) -> None:
        if os.path.isdir(self.dataset_dir):
            # Only ever created complete (atomic rename), so a folder without its split file was made by hand.
            self.source.require_file(self.split_path, "split file", f"delete {self.dataset_dir} to regenerate it")
            found = generator_version(self.dataset_dir)
            if found != GENERATOR_VERSION:
                # Never mix images of two generators (nor reuse few-shot caches of old images): ask for a redraw.
                raise self.source.invalid(
                    "dataset folder", self.dataset_dir,
                    f"was drawn by ToyShapes generator version {found}, this is version {GENERATOR_VERSION}; "
                    "delete the folder to regenerate it",
                )
            return
        print(f"Generating the ToyShapes dataset in {self.dataset_dir}")
        generate_toy_shapes(self.dataset_dir, self.split_file)
