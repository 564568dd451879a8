#!/usr/bin/env python
"""Download, verify and unpack the CoOp-family datasets into a DATASET.ROOT folder (see DATASETS.md).

    python scripts/download_data.py --dataset all --root ~/data
    python scripts/download_data.py --dataset oxford_pets eurosat --root ~/data
    python scripts/download_data.py --dataset all --root ~/data --dry-run    # show what would happen

Datasets are named by their config id (``oxford_pets``) or registered name (``OxfordPets``), case-insensitive.
What can be fetched by URL or Google-Drive id is downloaded (HTTP downloads resume from a ``.part`` file after an
interruption; Google-Drive files through ``gdown``), checked (MD5 where published, archive/JSON integrity
otherwise) and unpacked so that the folder layout of DATASETS.md appears. What cannot (ImageNet, ImageNet-Sketch,
or a URL that no longer answers) is reported with the exact steps to do by hand. A dataset whose expected files are
already present is skipped, so the script can be re-run at any time.

Exit status: 0 when every requested dataset is complete or only waits for manual steps, 1 when a download or a
check failed, 2 for bad arguments (including a --root that is a file or not writable).
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import sys
import tempfile
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

CHUNK = 1 << 20  # bytes per read while downloading / hashing
DOWNLOADS_DIR = "downloads"  # archives are kept under <root>/downloads/ until unpacked
DOCS = "DATASETS.md"


def gdrive_url(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}/view?usp=sharing"


@dataclass(frozen=True)
class Fetch:
    """One file to get.

    Source: ``urls`` (mirrors of the same file, tried in order) or ``gdrive_id`` (Google Drive, via gdown);
    ``copy_from`` (a file of another dataset, relative to the root) is used instead when it exists. Archives
    (``unpack_to`` set) are downloaded to ``<root>/downloads/<filename>`` and unpacked into ``<root>/<unpack_to>``,
    taking only the archive's sub-folder ``take`` when given; plain files go to ``<root>/<dest>``.
    """

    filename: str
    urls: Tuple[str, ...] = ()
    gdrive_id: str = ""
    copy_from: str = ""
    md5: str = ""
    unpack_to: Optional[str] = None
    take: str = ""
    dest: str = ""

    @property
    def source(self) -> str:
        """The URL shown to the user (first mirror or the Google-Drive page)."""
        return self.urls[0] if self.urls else gdrive_url(self.gdrive_id)


@dataclass(frozen=True)
class DatasetPlan:
    """Everything needed for one dataset: files to fetch, paths that prove it is complete, manual steps."""

    key: str  # config id (configs/datasets/<key>.yaml)
    name: str  # registered name, also the DATASETS.md section (#<name lower-cased>)
    fetches: Tuple[Fetch, ...]
    ready: Tuple[str, ...]  # paths relative to the root that exist once the dataset is complete
    manual: Tuple[str, ...] = ()  # steps to do by hand (shown when a ready path is still missing)
    after_unpack: Optional[Callable[[str], None]] = field(default=None, compare=False)

    @property
    def section(self) -> str:
        return f"{DOCS}#{self.name.lower()}"


IMAGENET_CLASSNAMES_ID = "1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF"


def split_file(dataset_dir: str, name: str, file_id: str) -> Fetch:
    return Fetch(f"split_zhou_{name}.json", gdrive_id=file_id, dest=f"{dataset_dir}/split_zhou_{name}.json")


def classnames_copy(dataset_dir: str) -> Fetch:
    """ImageNet's classnames.txt, copied from imagenet/ when present (else from Google Drive)."""
    return Fetch("classnames.txt", gdrive_id=IMAGENET_CLASSNAMES_ID, copy_from="imagenet/classnames.txt",
                 dest=f"{dataset_dir}/classnames.txt")


def _unpack_caltech_inner(root: str) -> None:
    """The CaltechDATA zip holds the image archive itself: unpack caltech-101/101_ObjectCategories.tar.gz."""
    inner = os.path.join(root, "caltech-101", "101_ObjectCategories.tar.gz")
    if os.path.isfile(inner):
        unpack(inner, os.path.join(root, "caltech-101"))
        os.remove(inner)


PLANS: Tuple[DatasetPlan, ...] = (
    DatasetPlan(
        "imagenet", "ImageNet",
        (Fetch("classnames.txt", gdrive_id=IMAGENET_CLASSNAMES_ID, dest="imagenet/classnames.txt"),),
        ready=("imagenet/images/train", "imagenet/images/val", "imagenet/classnames.txt"),
        manual=(
            "Register at https://image-net.org/index.php and download ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar (ILSVRC 2012, 1000 classes).",
            "Unpack the train images into <root>/imagenet/images/train/<wnid>/*.JPEG (1000 folders; the train tar "
            "holds one tar per class).",
            "Unpack the val images into <root>/imagenet/images/val/<wnid>/*.JPEG, sorted into the same 1000 class "
            "folders (the val tar is flat; sort it with the labels of the ILSVRC2012 devkit).",
        ),
    ),
    DatasetPlan(
        "caltech101", "Caltech101",
        (Fetch("caltech-101.zip", urls=("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",),
               md5="3138e1922a9193bfa496528edbbc45d0", unpack_to="caltech-101", take="caltech-101"),
         split_file("caltech-101", "Caltech101", "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN")),
        ready=("caltech-101/101_ObjectCategories", "caltech-101/split_zhou_Caltech101.json"),
        after_unpack=_unpack_caltech_inner,
    ),
    DatasetPlan(
        "oxford_pets", "OxfordPets",
        (Fetch("images.tar.gz", urls=("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",),
               md5="5c4f3ee8e5d25df40f4fd59a7f44e54c", unpack_to="oxford_pets"),
         Fetch("annotations.tar.gz", urls=("https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",),
               md5="95a8c909bbe2e81eed6a22bccdf3f68f", unpack_to="oxford_pets"),
         split_file("oxford_pets", "OxfordPets", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs")),
        ready=("oxford_pets/images", "oxford_pets/split_zhou_OxfordPets.json"),
    ),
    DatasetPlan(
        "stanford_cars", "StanfordCars",
        (Fetch("cars_train.tgz", urls=("http://ai.stanford.edu/~jkrause/car196/cars_train.tgz",),
               unpack_to="stanford_cars"),
         Fetch("cars_test.tgz", urls=("http://ai.stanford.edu/~jkrause/car196/cars_test.tgz",),
               unpack_to="stanford_cars"),
         Fetch("car_devkit.tgz", urls=("https://ai.stanford.edu/~jkrause/cars/car_devkit.tgz",),
               unpack_to="stanford_cars"),
         Fetch("cars_test_annos_withlabels.mat",
               urls=("http://ai.stanford.edu/~jkrause/car196/cars_test_annos_withlabels.mat",),
               dest="stanford_cars/cars_test_annos_withlabels.mat"),
         split_file("stanford_cars", "StanfordCars", "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT")),
        ready=("stanford_cars/cars_train", "stanford_cars/cars_test", "stanford_cars/split_zhou_StanfordCars.json"),
        manual=(
            "If the Stanford URLs no longer answer, get cars_train/, cars_test/, devkit/ and "
            "cars_test_annos_withlabels.mat from a mirror of the Stanford Cars dataset and place them in "
            "<root>/stanford_cars/.",
        ),
    ),
    DatasetPlan(
        "oxford_flowers", "OxfordFlowers",
        (Fetch("102flowers.tgz", urls=("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",),
               md5="52808999861908f626f3c1f4e79d11fa", unpack_to="oxford_flowers"),
         Fetch("imagelabels.mat", urls=("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat",),
               md5="e0620be6f572b9609742df49c70aed4d", dest="oxford_flowers/imagelabels.mat"),
         Fetch("cat_to_name.json", gdrive_id="1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0",
               dest="oxford_flowers/cat_to_name.json"),
         split_file("oxford_flowers", "OxfordFlowers", "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT")),
        ready=("oxford_flowers/jpg", "oxford_flowers/split_zhou_OxfordFlowers.json"),
    ),
    DatasetPlan(
        "food101", "Food101",
        (Fetch("food-101.tar.gz", urls=("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",),
               md5="85eeb15f3717b99a5da872d97d918f87", unpack_to=""),
         split_file("food-101", "Food101", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl")),
        ready=("food-101/images", "food-101/split_zhou_Food101.json"),
    ),
    DatasetPlan(
        "fgvc_aircraft", "FGVCAircraft",
        (Fetch("fgvc-aircraft-2013b.tar.gz",
               urls=("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",),
               unpack_to="fgvc_aircraft", take="fgvc-aircraft-2013b/data"),),
        ready=("fgvc_aircraft/images", "fgvc_aircraft/variants.txt"),
    ),
    DatasetPlan(
        "sun397", "SUN397",
        (Fetch("SUN397.tar.gz", urls=("http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",),
               md5="8ca2778205c41d23104230ba66911c7a", unpack_to="sun397"),
         Fetch("Partitions.zip", urls=("https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip",),
               unpack_to="sun397"),
         split_file("sun397", "SUN397", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq")),
        ready=("sun397/SUN397", "sun397/split_zhou_SUN397.json"),
    ),
    DatasetPlan(
        "dtd", "DescribableTextures",
        (Fetch("dtd-r1.0.1.tar.gz", urls=("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",),
               md5="fff73e5086ae6bdbea199a49dfb8a4c1", unpack_to=""),
         split_file("dtd", "DescribableTextures", "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x")),
        ready=("dtd/images", "dtd/split_zhou_DescribableTextures.json"),
    ),
    DatasetPlan(
        "eurosat", "EuroSAT",
        (Fetch("EuroSAT.zip", urls=(
            "https://huggingface.co/datasets/torchgeo/eurosat/resolve/c877bcd43f099cd0196738f714544e355477f3fd/"
            "EuroSAT.zip",
            "http://madm.dfki.de/files/sentinel/EuroSAT.zip"),
            md5="c8fa014336c82ac7804f0398fcb19387", unpack_to="eurosat"),
         split_file("eurosat", "EuroSAT", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o")),
        ready=("eurosat/2750", "eurosat/split_zhou_EuroSAT.json"),
    ),
    DatasetPlan(
        "ucf101", "UCF101",
        (Fetch("UCF-101-midframes.zip", gdrive_id="10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O", unpack_to="ucf101"),
         split_file("ucf101", "UCF101", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y")),
        ready=("ucf101/UCF-101-midframes", "ucf101/split_zhou_UCF101.json"),
    ),
    DatasetPlan(
        "imagenetv2", "ImageNetV2",
        (Fetch("imagenetv2-matched-frequency.tar.gz",
               urls=("https://s3-us-west-2.amazonaws.com/imagenetv2public/imagenetv2-matched-frequency.tar.gz",),
               unpack_to="imagenetv2"),
         classnames_copy("imagenetv2")),
        ready=("imagenetv2/imagenetv2-matched-frequency-format-val", "imagenetv2/classnames.txt"),
    ),
    DatasetPlan(
        "imagenet_sketch", "ImageNetSketch",
        (classnames_copy("imagenet-sketch"),),
        ready=("imagenet-sketch/images", "imagenet-sketch/classnames.txt"),
        manual=(
            "Download ImageNet-Sketch as linked from https://github.com/HaohanWang/ImageNet-Sketch "
            "(ImageNet-Sketch.zip, which holds sketch/<wnid>/).",
            "Unpack it and rename/move the class folders so that <root>/imagenet-sketch/images/<wnid>/ exists "
            "(1000 folders).",
        ),
    ),
    DatasetPlan(
        "imagenet_a", "ImageNetA",
        (Fetch("imagenet-a.tar", urls=("https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",),
               md5="c3e55429088dc681f30d81f4726b6595", unpack_to="imagenet-adversarial"),
         classnames_copy("imagenet-adversarial")),
        ready=("imagenet-adversarial/imagenet-a", "imagenet-adversarial/classnames.txt"),
    ),
    DatasetPlan(
        "imagenet_r", "ImageNetR",
        (Fetch("imagenet-r.tar", urls=("https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",),
               md5="a61312130a589d0ca1a8fca1f2bd3337", unpack_to="imagenet-rendition"),
         classnames_copy("imagenet-rendition")),
        ready=("imagenet-rendition/imagenet-r", "imagenet-rendition/classnames.txt"),
    ),
)


class FetchError(RuntimeError):
    """A download, check or unpack step failed (the message says which file and why)."""


# ------------------------------------------------------------------------------------------------ downloading


def download_url(url: str, path: str, md5: str = "", timeout: float = 60.0, quiet: bool = False) -> None:
    """Download ``url`` to ``path``, resuming from ``path + ".part"`` when a previous run was interrupted.

    The partial file is extended with an HTTP ``Range`` request; a server that ignores the range (status 200)
    restarts it from zero. The finished file is checked against ``md5`` (when given) before it is renamed to
    ``path``; a mismatching file is deleted.
    """
    from tqdm import tqdm

    part = path + ".part"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    offset = os.path.getsize(part) if os.path.isfile(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "hicropl-download-data"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not offset:  # 416: the range starts at the end, i.e. the .part file is complete
            raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        response = None
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"{url}: {getattr(exc, 'reason', exc)}") from None

    if response is not None:
        with response:
            resumed = offset > 0 and response.status == 206
            if not resumed:
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=os.path.basename(path), disable=quiet,
            ) as bar:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise FetchError(f"{url}: connection lost ({exc!r}); run again to resume") from None
                    if not chunk:
                        break
                    f.write(chunk)
                    bar.update(len(chunk))
            if total is not None and os.path.getsize(part) < total:
                raise FetchError(f"{url}: download stopped at {os.path.getsize(part)} of {total} bytes; run again "
                                 "to resume")
    if md5:
        actual = file_md5(part)
        if actual != md5:
            os.remove(part)
            raise FetchError(f"{url}: MD5 {actual} != expected {md5} (corrupt download deleted; run again)")
    os.replace(part, path)


def download_gdrive(file_id: str, path: str, quiet: bool = False) -> None:
    """Download a Google-Drive file with gdown (imported here, so the rest works without it), resuming."""
    try:
        import gdown
    except ImportError:
        raise FetchError(f"gdown is needed for Google-Drive files (pip install gdown); or download "
                         f"{gdrive_url(file_id)} to {path} by hand") from None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        result = gdown.download(id=file_id, output=path, quiet=quiet, resume=True)
    except Exception as exc:  # gdown raises its own types for quota pages, permissions, network errors
        raise FetchError(f"{gdrive_url(file_id)}: {type(exc).__name__}: {exc}") from None
    if result is None or not os.path.isfile(path):
        raise FetchError(f"{gdrive_url(file_id)}: gdown could not download it (quota or permissions?); download "
                         f"it by hand to {path}")


def file_md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ checking, unpacking


def check_file(path: str, md5: str = "") -> None:
    """Raise ``FetchError`` unless ``path`` looks right: its MD5 (when given) and its integrity by type.

    Zip/tar files must open as archives and JSON files must parse (split files with "train", "val", "test");
    Google Drive answers with an HTML page when a quota is exceeded, and these checks catch that.
    """
    name = os.path.basename(path)
    if md5 and file_md5(path) != md5:
        raise FetchError(f"{path}: MD5 differs from the published {md5}; delete it and run again")
    if name.endswith(".json"):
        try:
            with open(path) as f:
                data = json.load(f)
        except ValueError as exc:
            raise FetchError(f"{path}: not valid JSON ({exc}); delete it and run again") from None
        if name.startswith("split_zhou_") and not (isinstance(data, dict) and {"train", "val", "test"} <= set(data)):
            raise FetchError(f'{path}: a split file needs "train", "val" and "test"; delete it and run again')
    elif name.endswith(".zip"):
        if not zipfile.is_zipfile(path):
            raise FetchError(f"{path}: not a zip archive; delete it and run again")
    elif name.endswith((".tar", ".tar.gz", ".tgz")):
        if not tarfile.is_tarfile(path):
            raise FetchError(f"{path}: not a tar archive; delete it and run again")


def unpack(archive: str, dest: str, take: str = "") -> None:
    """Unpack ``archive`` into ``dest`` (only its sub-folder ``take`` when given).

    Everything is first extracted into a hidden staging folder inside ``dest`` and then moved into place (folders
    merged, files replaced), so an interrupted unpack never leaves a half-written file in the dataset folders (a
    leftover staging folder is cleared by the next run; the loaders skip hidden names). Members that would land
    outside the folder (absolute paths, ``..``, links pointing out) are refused.
    """
    os.makedirs(dest, exist_ok=True)
    staging = os.path.join(dest, f".unpacking-{os.path.basename(archive)}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    _check_member(member, archive)
                zf.extractall(staging)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: the standard safety filter
                    try:
                        tf.extractall(staging, filter="data")
                    except tarfile.FilterError as exc:
                        raise FetchError(f"{archive}: unsafe member refused ({exc})") from None
                else:
                    for member in tf.getmembers():
                        _check_member(member.name, archive)
                        if member.issym() or member.islnk():
                            _check_member(os.path.join(os.path.dirname(member.name), member.linkname), archive)
                    tf.extractall(staging)
        else:
            raise FetchError(f"{archive}: not a zip or tar archive")
        source = os.path.join(staging, take) if take else staging
        if not os.path.isdir(source):
            raise FetchError(f"{archive}: expected folder {take!r} inside the archive")
        for entry in sorted(os.listdir(source)):
            _merge_move(os.path.join(source, entry), os.path.join(dest, entry))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _merge_move(source: str, target: str) -> None:
    """Move ``source`` to ``target``; folders that exist on both sides are merged, files are replaced."""
    if os.path.isdir(source) and os.path.isdir(target) and not os.path.islink(target):
        for entry in os.listdir(source):
            _merge_move(os.path.join(source, entry), os.path.join(target, entry))
        os.rmdir(source)
    else:
        os.replace(source, target)


def _check_member(member: str, archive: str) -> None:
    normalised = os.path.normpath(member)
    if os.path.isabs(member) or normalised == ".." or normalised.startswith(".." + os.sep):
        raise FetchError(f"{archive}: unsafe member {member!r} refused")


# ------------------------------------------------------------------------------------------------ the plan


def missing_paths(plan: DatasetPlan, root: str) -> List[str]:
    return [p for p in plan.ready if not os.path.exists(os.path.join(root, p))]


def fetch_target(fetch: Fetch, root: str) -> str:
    """Where the downloaded file is stored: the archive in downloads/, or the plain file at its destination."""
    if fetch.unpack_to is not None:
        return os.path.join(root, DOWNLOADS_DIR, fetch.filename)
    return os.path.join(root, fetch.dest)


def unpacked_marker(fetch: Fetch, root: str) -> str:
    """Written after an archive is fully unpacked, so re-runs neither download nor unpack it again."""
    return os.path.join(root, DOWNLOADS_DIR, fetch.filename + ".unpacked")


def is_done(fetch: Fetch, root: str) -> bool:
    if fetch.unpack_to is not None:
        return os.path.isfile(unpacked_marker(fetch, root))
    return os.path.isfile(fetch_target(fetch, root))


def describe(plan: DatasetPlan, root: str) -> List[str]:
    """Dry-run lines: what would be fetched and unpacked, what is already there, what is manual."""
    if not missing_paths(plan, root):
        return [f"{plan.key}: complete ({', '.join(plan.ready)} present); nothing to do"]
    lines = []
    for fetch in plan.fetches:
        target = fetch_target(fetch, root)
        if is_done(fetch, root):
            lines.append(f"{plan.key}: {fetch.filename} done")
            continue
        if fetch.copy_from:
            lines.append(f"{plan.key}: would copy {os.path.join(root, fetch.copy_from)} -> {target} (if it is "
                         f"missing then: download gdown {fetch.source})")
            continue
        if os.path.isfile(target):
            lines.append(f"{plan.key}: {target} present; would check it")
        else:
            part = target + ".part"
            resume = f" (resuming after {os.path.getsize(part)} bytes)" if os.path.isfile(part) else ""
            via = "" if fetch.urls else "gdown "
            lines.append(f"{plan.key}: would download {via}{fetch.source} -> {target}{resume}")
        if fetch.unpack_to is not None:
            inner = f" (its folder {fetch.take}/)" if fetch.take else ""
            into = os.path.normpath(os.path.join(root, fetch.unpack_to))
            lines.append(f"{plan.key}: would unpack {fetch.filename}{inner} into {into}")
    lines.extend(manual_lines(plan, root))
    return lines


def manual_lines(plan: DatasetPlan, root: str) -> List[str]:
    return [f"{plan.key}: by hand: {step.replace('<root>', root)}" for step in plan.manual]


def run_fetch(fetch: Fetch, root: str, keep_archives: bool, quiet: bool, label: str) -> None:
    """Get one file (copy, URL with mirrors, or Google Drive), check it, and unpack it if it is an archive."""
    target = fetch_target(fetch, root)
    if fetch.copy_from and os.path.isfile(os.path.join(root, fetch.copy_from)):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(root, fetch.copy_from), target + ".part")
        os.replace(target + ".part", target)
        return
    md5_checked = False
    if not os.path.isfile(target):
        print(f"{label}: downloading {fetch.source}")
        if fetch.urls:
            errors = []
            for url in fetch.urls:
                try:
                    download_url(url, target, md5=fetch.md5, quiet=quiet)
                    break
                except FetchError as exc:
                    errors.append(str(exc))
            else:
                raise FetchError("; ".join(errors))
            md5_checked = True
        else:
            download_gdrive(fetch.gdrive_id, target, quiet=quiet)
    check_file(target, "" if md5_checked else fetch.md5)
    if fetch.unpack_to is not None:
        print(f"{label}: unpacking {fetch.filename}")
        unpack(target, os.path.join(root, fetch.unpack_to), fetch.take)
        with open(unpacked_marker(fetch, root), "w") as f:
            f.write(target + "\n")
        if not keep_archives:
            os.remove(target)


def run_plan(plan: DatasetPlan, root: str, keep_archives: bool, quiet: bool) -> str:
    """Fetch, check and unpack one dataset. Returns "complete" or "manual"; raises ``FetchError`` on failure."""
    if missing_paths(plan, root):
        for fetch in plan.fetches:
            if not is_done(fetch, root):
                run_fetch(fetch, root, keep_archives, quiet, plan.key)
        if plan.after_unpack is not None:
            plan.after_unpack(root)
    missing = missing_paths(plan, root)
    if not missing:
        print(f"{plan.key}: complete")
        return "complete"
    print(f"{plan.key}: still missing {', '.join(os.path.join(root, p) for p in missing)}; see {plan.section}")
    for line in manual_lines(plan, root):
        print(line)
    return "manual"


def resolve(names: Sequence[str]) -> List[DatasetPlan]:
    """Plans for ``names`` (config ids or registered names, any case; "all" = every dataset)."""
    by_name: Dict[str, DatasetPlan] = {}
    for plan in PLANS:
        by_name[plan.key.lower()] = plan
        by_name[plan.name.lower()] = plan
    chosen: List[DatasetPlan] = []
    for name in names:
        if name.lower() == "all":
            return list(PLANS)
        if name.lower() not in by_name:
            raise KeyError(name)
        if by_name[name.lower()] not in chosen:
            chosen.append(by_name[name.lower()])
    return chosen


def root_problem(root: str, dry_run: bool = False) -> Optional[str]:
    """Why ``root`` cannot hold the datasets (a file on the way, or a folder this user cannot write), else None.

    Checked before anything is downloaded; a dry run only needs the path to be a folder. Nothing is left behind: the
    write test creates the missing folders only to remove them again.
    """
    existing = root
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"--root {root}: {existing} is a file, not a folder; pass a folder"
    if dry_run:
        return None
    created = []
    try:
        folder = existing
        for part in os.path.relpath(root, existing).split(os.sep):
            if part == os.curdir:
                continue
            folder = os.path.join(folder, part)
            os.mkdir(folder)
            created.append(folder)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        return f"cannot write to --root {root} ({exc.strerror}); pass a folder you can write to"
    finally:
        for folder in reversed(created):
            os.rmdir(folder)
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", nargs="+", required=True, metavar="NAME",
                        help="'all' or dataset config ids / registered names: "
                             + ", ".join(plan.key for plan in PLANS))
    parser.add_argument("--root", required=True, help="DATASET.ROOT: the folder that holds one folder per dataset")
    parser.add_argument("--dry-run", action="store_true", help="print what would be done; download nothing")
    parser.add_argument("--keep-archives", action="store_true",
                        help=f"keep downloaded archives in <root>/{DOWNLOADS_DIR}/ after unpacking")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        plans = resolve(args.dataset)
    except KeyError as exc:
        parser.error(f"unknown dataset {exc.args[0]!r}; choose from all, " + ", ".join(p.key for p in PLANS))
    root = os.path.abspath(os.path.expanduser(args.root))
    problem = root_problem(root, args.dry_run)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    if args.dry_run:
        for plan in plans:
            for line in describe(plan, root):
                print(line)
        return 0

    failed, manual = [], []
    for plan in plans:
        try:
            if run_plan(plan, root, args.keep_archives, args.quiet) == "manual":
                manual.append(plan)
        except FetchError as exc:
            print(f"{plan.key}: FAILED: {exc}", file=sys.stderr)
            for line in manual_lines(plan, root):
                print(line, file=sys.stderr)
            print(f"{plan.key}: see {plan.section} to finish by hand", file=sys.stderr)
            failed.append(plan)
    if manual:
        print("Manual steps needed for: " + ", ".join(f"{p.key} ({p.section})" for p in manual))
    if failed:
        print("Failed: " + ", ".join(f"{p.key} ({p.section})" for p in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
