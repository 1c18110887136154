"""The official files of each dataset: where they are downloaded from, and where their
contents lie once unpacked, so that files already on disk are found (and not fetched again)
by the downloader and the preparers alike.

`SOURCES[name]` holds:
    homepage       where the dataset is described
    instructions   what to do by hand ({raw_dir} is filled in)
    folders        the folders under raw_dir where copies put the unpacked files ("" is
                   raw_dir itself), searched in this order
    files          one entry per official file: name, url (None: no download), sha256,
                   extract, and `unpacked`: {member: alternatives}, the paths (relative to
                   a folder) where each member of the archive may lie once unpacked

No checksum is published by the dataset owners, so `sha256` is None unless it is known for
certain; pass your own to `download.download` to pin a copy you trust.
"""
from __future__ import annotations

from pathlib import Path

from egath.datasets.raw import first_present, locate

NUSWIDE_URLS = ("https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/"
                "NUS-WIDE-urls.rar")
NUSWIDE_IMAGES_INSTRUCTIONS = """\
NUS-WIDE's 269,648 Flickr images are given out by NUS on request (the agreement form on the
NUS-WIDE page; """ + NUSWIDE_URLS + """ lists the original Flickr URLs, many now dead).
Copies also circulate, e.g. HashNet's nus_wide.tar.gz (223,496 images named
<n>_<Flickr photo id>_<secret>_m.jpg). Unpack the images anywhere under {raw_dir} (a
symlinked folder works); each image of ImageList/Imagelist.txt is found
  1. by its Imagelist path, e.g. {raw_dir}/Flickr/actor/0001_2124494179.jpg,
  2. else by its file name in any folder, e.g. {raw_dir}/images/0001_2124494179.jpg,
  3. else by its Flickr photo id: a file name that is the photo id, e.g.
     {raw_dir}/images/2124494179.jpg, or holds it as its second "_" field, e.g.
     {raw_dir}/images/27863_2124494179_90ee058136_m.jpg.
Links are also found by the path they point to, so a folder of links named by row of
Imagelist.txt (images/0.jpg -> ../Flickr/actor/0001_2124494179.jpg) works; files (not links)
named by row number cannot be told apart safely and are not used."""

_MIR = "http://press.liacs.nl/mirflickr/mirflickr25k.v3b/"
_NUS = "https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/"
_COCO = "http://images.cocodataset.org/"


def _coco(year: int) -> dict:
    annotations = {f"{kind}_{split}{year}.json": (f"annotations/{kind}_{split}{year}.json",)
                   for kind in ("instances", "captions") for split in ("train", "val")}
    return {
        "homepage": "https://cocodataset.org/#download",
        "folders": ("",),
        "files": [
            {"name": f"annotations_trainval{year}.zip",
             "url": f"{_COCO}annotations/annotations_trainval{year}.zip", "sha256": None,
             "extract": True, "unpacked": annotations},
            *({"name": f"{split}{year}.zip", "url": f"{_COCO}zips/{split}{year}.zip",
               "sha256": None, "extract": True,
               "unpacked": {f"{split}{year}/": (f"{split}{year}",)}}
              for split in ("train", "val")),
        ],
        "instructions": f"Unpack in {{raw_dir}}: annotations/, train{year}/, val{year}/.",
    }


SOURCES: dict[str, dict] = {
    "mirflickr25k": {
        "homepage": "https://press.liacs.nl/mirflickr/mirdownload.html",
        "folders": ("", "mirflickr25k"),
        "files": [
            {"name": "mirflickr25k.zip", "url": _MIR + "mirflickr25k.zip", "sha256": None,
             "extract": True, "unpacked": {"meta/tags": ("mirflickr/meta/tags",)}},
            {"name": "mirflickr25k_annotations_v080.zip",
             "url": _MIR + "mirflickr25k_annotations_v080.zip", "sha256": None,
             "extract": True,
             "unpacked": {"animals.txt": ("mirflickr25k_annotations_v080/animals.txt",
                                          "annotations/animals.txt", "animals.txt")}},
        ],
        "instructions": "Unpack both archives in {raw_dir}: mirflickr/ (images, meta/tags, "
                        "doc/common_tags.txt) and mirflickr25k_annotations_v080/.",
    },
    "nuswide": {
        "homepage": _NUS + "NUS-WIDE.html",
        # A mirror's NUS-WIDE/; DCHMT's make_nuswide.py reads Low-Level-Features/ and nuswide/.
        "folders": ("", "NUS-WIDE", "nuswide", "NUS_WIDE", "Low-Level-Features"),
        "files": [
            {"name": "ImageList.zip", "url": _NUS + "ImageList.zip", "sha256": None,
             "extract": True,
             "unpacked": {"Imagelist.txt": ("ImageList/Imagelist.txt", "Imagelist.txt")}},
            {"name": "NUS_WID_Tags.zip", "url": _NUS + "NUS_WID_Tags.zip", "sha256": None,
             "extract": True,
             "unpacked": {name: (f"NUS_WID_Tags/{name}", name)
                          for name in ("TagList1k.txt", "AllTags1k.txt", "All_Tags.txt")}},
            {"name": "Groundtruth.zip", "url": _NUS + "Groundtruth.zip", "sha256": None,
             "extract": True,
             "unpacked": {"AllLabels/": ("Groundtruth/AllLabels", "AllLabels")}},
            {"name": "ConceptsList.zip", "url": _NUS + "ConceptsList.zip", "sha256": None,
             "extract": True,
             "unpacked": {"Concepts81.txt": ("ConceptsList/Concepts81.txt", "Concepts81.txt",
                                             "Groundtruth/Concepts81.txt")}},
            {"name": "Flickr/", "url": None, "sha256": None, "extract": False},
        ],
        "instructions": NUSWIDE_IMAGES_INSTRUCTIONS,
    },
    "coco2014": _coco(2014),
    "coco2017": _coco(2017),
}


def member_paths(folders: tuple[str, ...], alternatives: tuple[str, ...]) -> list[str]:
    """Where a member may lie, relative to raw_dir, in search order."""
    return [str(Path(folder, alt)) for folder in folders for alt in alternatives]


def find_member(name: str, raw_dir: Path, member: str, what: str, hint: str = "") -> Path:
    """The path of `member` of dataset `name` under raw_dir; DatasetError naming where it
    was looked for (and where it is, when raw_dir is the wrong folder) when absent."""
    table = SOURCES[name]
    for entry in table["files"]:
        if member in entry.get("unpacked", {}):
            return locate(raw_dir, member_paths(table["folders"], entry["unpacked"][member]),
                          what, hint)
    raise KeyError(f"{name} has no official file member {member!r}")


def unpacked_in_place(entry: dict, folders: tuple[str, ...], raw_dir: Path
                      ) -> list[Path] | None:
    """The paths of an archive's members when all of them are under raw_dir, else None."""
    found = []
    for alternatives in entry.get("unpacked", {}).values():
        path = first_present(raw_dir, member_paths(folders, alternatives))
        if path is None:
            return None
        found.append(path)
    return found or None


def where_to_put(entry: dict, folders: tuple[str, ...], raw_dir: Path) -> str:
    """Where a user puts an archive, or its unpacked members, to spare the download."""
    text = f"put {entry['name']} in {raw_dir}"
    members = entry.get("unpacked", {})
    if members:
        paths = ", ".join(str(raw_dir / alternatives[0])
                          + (f" (or {', '.join(alternatives[1:])})" if alternatives[1:] else "")
                          for alternatives in members.values())
        text += f", or unpack it there so that {paths} exist"
        if len(folders) > 1:
            text += f" (also accepted inside {', '.join(f + '/' for f in folders[1:])})"
    return text

