"""CelebA as files, for the layout and prepare tests: a small release drawn from the generated
faces (`generated_celeba`, runs anywhere) or the real files of ../shared (`shared_celeba`), and
the two layouts users unpack them into (`make_official`, `make_kaggle`).

The generated release copies the shape of the real one: 178x218 JPEGs named like CelebA's
(`000001.jpg`), a complete partition file (202,599 lines, CRLF, the official split boundaries)
and an attribute file truncated like ../shared's (declared 202,599, rows for 000001..020000
only). Its images are spread over the splits: 125 with attribute rows, 65 later train images,
65 val and 65 test. Each face's drawn attributes are its rows under CelebA's names; the other
attributes, and the rows of images not drawn, are seeded coin flips.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ddpmkit.data.celeba import read_attributes, read_partition
from ddpmkit.data.synthetic import FACE_ATTRIBUTES, draw_face_with_attributes

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
IMAGE_COUNT = 202_599  # images in the full release: the partition file's lines
FIRST_VAL, FIRST_TEST = 162_771, 182_638  # the official partition's split boundaries
ATTRIBUTE_ROWS = 20_000  # ../shared's attribute file stops at 020000.jpg
WIDTH, HEIGHT = 178, 218  # CelebA's aligned images
GENERATED_IDS = (
    [1 + 150 * k for k in range(125)]  # train, with attribute rows
    + [100_001 + 97 * k for k in range(65)]  # train, no rows
    + [170_001 + 97 * k for k in range(65)]  # val
    + [190_001 + 97 * k for k in range(65)]  # test
)


@dataclass(frozen=True)
class CelebaFiles:
    """A CelebA release: its image folder, partition and attribute files, and the image names present."""

    kind: str  # "generated" or "shared"
    images: Path
    partition: Path
    attributes: Path
    names: list[str]  # sorted


def _split(i: int) -> int:
    return 0 if i < FIRST_VAL else 1 if i < FIRST_TEST else 2


def generated_face(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Image i as CelebA would hold it: (218, 178, 3) uint8 (the face, its background continued
    above and below), and its (11,) drawn attributes (FACE_ATTRIBUTES order)."""
    face, attrs = draw_face_with_attributes(WIDTH, seed=0, index=i)
    pad = (HEIGHT - WIDTH) // 2
    return np.pad(face, ((pad, HEIGHT - WIDTH - pad), (0, 0), (0, 0)), mode="edge"), attrs


def write_generated_celeba(root: Path) -> CelebaFiles:
    """Write the generated release under root (about a second); see the module docstring."""
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    values = rng.choice(np.array([-1, 1], dtype=np.int8), size=(ATTRIBUTE_ROWS, len(CELEBA_ATTRIBUTES)))
    columns = [CELEBA_ATTRIBUTES.index(a) for a in FACE_ATTRIBUTES]
    for i in GENERATED_IDS:
        pixels, drawn = generated_face(i)
        Image.fromarray(pixels).save(images / f"{i:06d}.jpg", quality=90)
        if i <= ATTRIBUTE_ROWS:
            values[i - 1, columns] = drawn
    partition = root / "list_eval_partition.txt"
    partition.write_bytes("".join(f"{i:06d}.jpg {_split(i)}\r\n" for i in range(1, IMAGE_COUNT + 1)).encode())
    attributes = root / f"list_attr_celeba_000001-{ATTRIBUTE_ROWS:06d}.txt"
    rows = (f"{i + 1:06d}.jpg " + " ".join(f"{v:2d}" for v in row) for i, row in enumerate(values))
    attributes.write_bytes("\r\n".join([str(IMAGE_COUNT), " ".join(CELEBA_ATTRIBUTES) + " ", *rows, ""]).encode())
    return CelebaFiles("generated", images, partition, attributes, [f"{i:06d}.jpg" for i in GENERATED_IDS])


def shared_celeba(folder: Path) -> CelebaFiles:
    """The real files of ../shared/celeba (see its README)."""
    images = folder / "img_align_celeba"
    names = sorted(p.name for p in images.glob("*.jpg"))
    return CelebaFiles("shared", images, folder / "list_eval_partition.txt",
                       folder / f"list_attr_celeba_000001-{ATTRIBUTE_ROWS:06d}.txt", names)


def make_official(root: Path, src: CelebaFiles, names: list[str]) -> Path:
    """The official layout: img_align_celeba/ with the two .txt files beside it, all symlinks."""
    (root / "img_align_celeba").mkdir(parents=True)
    for n in names:
        (root / "img_align_celeba" / n).symlink_to(src.images / n)
    for f in (src.partition, src.attributes):
        (root / f.name).symlink_to(f)
    return root


def make_kaggle(root: Path, src: CelebaFiles, names: list[str]) -> Path:
    """The Kaggle layout, with symlinked images and CSVs written from the release's files."""
    img = root / "img_align_celeba" / "img_align_celeba"
    img.mkdir(parents=True)
    for n in names:
        (img / n).symlink_to(src.images / n)
    part = read_partition(src.partition)
    with open(root / "list_eval_partition.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "partition"])
        w.writerows([n, part[n]] for n in names)
    table = read_attributes(src.attributes)
    with open(root / "list_attr_celeba.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", *table.names])
        for n in names:
            v = table.get(n)
            if v is not None:
                w.writerow([n, *v.tolist()])
    return root
