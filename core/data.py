"""Datasets held whole in memory as uint8 tensors; batches are drawn by index.

The IDX format (LeCun's MNIST files, also used by Fashion-MNIST) is a big-endian header followed by raw values:
    bytes 0-1: 0x00 0x00 | byte 2: dtype code (0x08 = uint8) | byte 3: number of dims D | D x int32 sizes | data.
Files may be gzipped. A dataset is found, in order, in the folder the user names, in $GENLAB_DATA/<name>,
in /usr/share/datasets/<name> (Debian's dataset-fashion-mnist package), or in ~/.cache/genlab/<name>, where it is
downloaded when the machine is online. Offline with no files, the error says how to get them.

Images go from uint8 [0, 255] to float [-1, 1] only when a batch is drawn (x / 127.5 - 1), so the 60k Fashion-MNIST
training images cost 47 MB, and a batch is one index into one tensor: no per-item Python, no PIL.
"""
from __future__ import annotations

import gzip
import os
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

FASHION_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat",
                   "sandal", "shirt", "sneaker", "bag", "ankle boot")
DIGIT_CLASSES = tuple(str(i) for i in range(10))
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MIRRORS = {"fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
           "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/"}
BUILT_IN_DATASETS = ("fashion-mnist", "mnist", "digits")   # found or fetched by name; the folders need --data-dir
DATASETS = (*BUILT_IN_DATASETS, "folder", "paired-folder")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DatasetNotFound(FileNotFoundError):
    """No files for a dataset and no way to download them."""


# ---------------------------------------------------------------------------------------------------- IDX format
def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally .gz) into a numpy array of its declared shape."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}i", raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    data = raw[4 + 4 * ndim:]
    if len(data) != expected:
        raise ValueError(f"{path}: header declares shape {shape} ({expected} bytes) but {len(data)} bytes follow")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write an array as IDX (gzipped when the name ends in .gz). The inverse of read_idx."""
    code = {np.dtype(v).newbyteorder(">"): k for k, v in _IDX_DTYPES.items()}
    big = array.astype(np.dtype(array.dtype).newbyteorder(">"))
    header = bytes([0, 0, code[big.dtype], array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + big.tobytes()
    Path(path).write_bytes(gzip.compress(payload) if str(path).endswith(".gz") else payload)


# ---------------------------------------------------------------------------------------------------- the dataset
@dataclass
class Batch:
    images: Tensor   # (B, C, H, W) float in [-1, 1]
    labels: Tensor   # (B,) int64
    inputs: Tensor | None = None   # paired data: the input image of each target image, like `images`

    def to(self, device) -> "Batch":
        return Batch(self.images.to(device), self.labels.to(device),
                     None if self.inputs is None else self.inputs.to(device))


def perturbed(images: Tensor, rate: float, generator: torch.Generator) -> Tensor:
    """The training data of Ren et al. 2019's background model (Sec. 3): each pixel of images in [-1, 1] is replaced,
    with probability `rate`, by one of the 256 levels k/127.5 − 1 drawn uniformly. The perturbation destroys the
    semantics and keeps the population-level background statistics, which the likelihood ratio then cancels."""
    hit = torch.rand(images.shape, generator=generator) < rate
    levels = torch.randint(0, 256, images.shape, generator=generator).to(images.dtype) / 127.5 - 1
    return torch.where(hit.to(images.device), levels.to(images.device), images)


@dataclass
class ImageData:
    """A whole dataset in memory: uint8 images (N, C, H, W) and int64 labels (N,); paired data (image-to-image
    translation) also holds each image's input, uint8 of the same shape."""
    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    name: str = ""
    pad_to: int | None = None      # pad each side with black (-1) up to this size when batches are drawn
    split: str = ""
    inputs: Tensor | None = None

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if self.inputs is not None and (self.inputs.dtype != torch.uint8 or self.inputs.shape != self.images.shape):
            raise ValueError(f"inputs must be uint8 of the images' shape {tuple(self.images.shape)}, got "
                             f"{self.inputs.dtype} {tuple(self.inputs.shape)}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.images.shape[1:]
        size = self.pad_to or 0
        return channels, max(height, size), max(width, size)

    def batch(self, index: Tensor | slice) -> Batch:
        """Rows `index` as a Batch, scaled to [-1, 1] (and padded when pad_to is set)."""
        scaled = lambda x: pad_images(to_float(x[index]), self.pad_to) if self.pad_to else to_float(x[index])
        return Batch(scaled(self.images), self.labels[index], None if self.inputs is None else scaled(self.inputs))

    def select(self, index: Tensor) -> "ImageData":
        return ImageData(self.images[index], self.labels[index], self.classes, self.name, self.pad_to, self.split,
                         None if self.inputs is None else self.inputs[index])

    def subset(self, classes: list[int | str] | tuple[int | str, ...]) -> "ImageData":
        """Only the rows of the given classes (by index or name), e.g. subset(["sneaker"])."""
        wanted = torch.tensor([self.class_index(c) for c in classes])
        return self.select(torch.isin(self.labels, wanted).nonzero().squeeze(1))

    def class_index(self, cls: int | str) -> int:
        if isinstance(cls, str) and cls in self.classes:
            return self.classes.index(cls)
        if isinstance(cls, int) and 0 <= cls < len(self.classes):
            return cls
        raise ValueError(f"unknown class {cls!r}; {self.name or 'this dataset'} has {list(self.classes)}")

    def batches(self, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                start: int = 0, drop_last: bool = True) -> Iterator[Batch]:
        """One epoch in an order fixed by (seed, epoch); process `rank` takes every world_size-th image.

        `start` skips that many batches, so a resumed run continues the same epoch where it stopped.
        """
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        order = order[rank::world_size]
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for begin in range(start * batch_size, stop, batch_size):
            yield self.batch(order[begin:begin + batch_size])


def pad_images(images: Tensor, size: int) -> Tensor:
    """Pad (B, C, H, W) images in [-1, 1] with -1 (black) to size x size, centred."""
    dh, dw = max(size - images.shape[-2], 0), max(size - images.shape[-1], 0)
    return F.pad(images, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), value=-1.0)


def to_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] floats -> uint8 [0, 255]."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# ------------------------------------------------------------------------------- paired tasks (image-to-image)
PAIRED_TASKS = ("edges", "inpaint", "pairs")    # pairs: the inputs come with the data (a paired folder)
EDGE_THRESHOLD = 0.25      # Sobel magnitude (kernels / 4, image in [0, 1]) above which a pixel is an edge
INPAINT_SIDE = 0.4         # side of the inpainting task's masked square, as a share of the image side
SOBEL = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]) / 4   # a unit step gives magnitude 1


def edge_map(images: Tensor, threshold: float = EDGE_THRESHOLD) -> Tensor:
    """The edges -> image task's input: with g = (Sobel_x * I, Sobel_y * I) of the grey image I in [0, 1], a pixel is
    an edge where |g| > threshold: 1 (white lines) there, -1 (black) elsewhere, in every channel.
    (B, C, H, W) in [-1, 1] -> the same shape."""
    grey = (images.float().mean(1, keepdim=True) + 1) / 2
    kernels = torch.stack([SOBEL, SOBEL.T])[:, None].to(grey.device)
    gradient = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels)
    edges = torch.where(gradient.square().sum(1, keepdim=True) > threshold ** 2, 1.0, -1.0)
    return edges.expand_as(images).to(images.dtype).contiguous()


def masked_square(images: Tensor, generator: torch.Generator | None = None, side: float = INPAINT_SIDE) -> Tensor:
    """The inpainting task's input: each image with a square of side round(side * H) at a random position (drawn
    from `generator`) set to 0, mid grey, which neither the black background nor a garment's light body holds."""
    b, _, h, w = images.shape
    k = round(side * min(h, w))
    top = (torch.rand(b, generator=generator) * (h - k + 1)).long()[:, None, None]
    left = (torch.rand(b, generator=generator) * (w - k + 1)).long()[:, None, None]
    rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    inside = (rows >= top) & (rows < top + k) & (cols >= left) & (cols < left + k)
    return images.masked_fill(inside[:, None].to(images.device), 0.0)


def paired_inputs(task: str, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
    """The input image of each target image of `batch` for a paired task: made from the targets ("edges",
    "inpaint"), or the inputs the data holds ("pairs", a paired folder)."""
    if task == "pairs":
        if batch.inputs is None:
            raise ValueError("the 'pairs' task needs paired data: --dataset paired-folder --data-dir FOLDER")
        return batch.inputs
    if batch.inputs is not None:
        raise ValueError(f"this data holds its own inputs (a paired folder): train with --task pairs, not {task!r}")
    if task == "edges":
        return edge_map(batch.images)
    if task == "inpaint":
        return masked_square(batch.images, generator)
    raise ValueError(f"unknown paired task {task!r}; choose one of {PAIRED_TASKS}")


# ---------------------------------------------------------------------------------------------------- finding files
def search_dirs(name: str, root: str | Path | None = None) -> list[Path]:
    dirs = [Path(root)] if root else []
    if os.environ.get("GENLAB_DATA"):
        dirs.append(Path(os.environ["GENLAB_DATA"]) / name)
    return dirs + [Path("/usr/share/datasets") / name, cache_dir(name)]


def cache_dir(name: str) -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "genlab" / name


def find_idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz", folder / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    return None


def download(name: str, timeout: float = 20.0) -> Path:
    """Fetch the four IDX files of `name` into the cache (write to .part, then rename). Raises OSError offline."""
    folder = cache_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    for stem in (f for pair in IDX_FILES.values() for f in pair):
        target = folder / f"{stem}.gz"
        if target.exists():
            continue
        with urllib.request.urlopen(MIRRORS[name] + target.name, timeout=timeout) as response:
            payload = response.read()
        if gzip.decompress(payload)[:2] != b"\0\0":
            raise OSError(f"downloaded {target.name} is not an IDX file")
        part = target.with_suffix(".part")
        part.write_bytes(payload)
        part.replace(target)
    return folder


def load_idx_dataset(name: str, split: str = "train", root: str | Path | None = None,
                     allow_download: bool | None = None) -> ImageData:
    """MNIST or Fashion-MNIST from IDX files; see the module docstring for where they are looked for."""
    if split not in IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    image_stem, label_stem = IDX_FILES[split]
    tried = search_dirs(name, root)
    for folder in tried:
        images, labels = find_idx_file(folder, image_stem), find_idx_file(folder, label_stem)
        if images and labels:
            break
    else:
        if allow_download is None:
            allow_download = os.environ.get("GENLAB_OFFLINE", "0") != "1" and not root
        error = "downloads are off (GENLAB_OFFLINE=1 or an explicit --data-dir)"
        if allow_download:
            try:
                folder = download(name)
                images, labels = find_idx_file(folder, image_stem), find_idx_file(folder, label_stem)
            except OSError as exc:
                error = f"download from {MIRRORS[name]} failed: {exc}"
        if not allow_download or images is None:
            hint = ("sudo apt-get install dataset-fashion-mnist" if name == "fashion-mnist"
                    else f"put the four IDX files ({image_stem}.gz, ...) in one folder and pass --data-dir")
            raise DatasetNotFound(
                f"{name} {split} files not found in {', '.join(map(str, tried))}; {error}. To get them: {hint}.")
    array = read_idx(images)
    classes = FASHION_CLASSES if name == "fashion-mnist" else DIGIT_CLASSES
    return ImageData(torch.from_numpy(array.copy()).unsqueeze(1), torch.from_numpy(read_idx(labels).astype(np.int64)),
                     classes, name, split=split)


def load_digits(split: str = "train", test_fraction: float = 0.2) -> ImageData:
    """scikit-learn's bundled 8x8 digits (1797 images, values 0-16) as a tiny dataset; a fixed split."""
    from sklearn.datasets import load_digits as sklearn_digits
    bunch = sklearn_digits()
    images = torch.from_numpy((bunch.images * (255 / 16)).round().astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    n_test = int(len(images) * test_fraction)
    index = order[n_test:] if split == "train" else order[:n_test]
    return ImageData(images[index], labels[index], DIGIT_CLASSES, "digits", split=split)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_PIXELS = 40_000_000          # larger files are refused before decoding (a 10000x10000 image is 100M)


def image_to_tensor(image, size: int, channels: int = 1) -> Tensor:
    """Any PIL image -> (C, size, size) uint8: grey (or RGB), centred on a black square of its longer side, resized.
    Fashion-MNIST items are light objects on black, centred; a photo keeps its own background."""
    from PIL import Image
    if image.width * image.height > MAX_PIXELS:
        raise ValueError(f"image of {image.width}x{image.height} pixels is larger than {MAX_PIXELS:,} pixels")
    image = image.convert("L" if channels == 1 else "RGB")
    side = max(image.size)
    square = Image.new(image.mode, (side, side))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    array = np.asarray(square.resize((size, size), Image.BILINEAR, reducing_gap=3.0))
    return torch.from_numpy(array.copy()).reshape(size, size, channels).permute(2, 0, 1).contiguous()


def read_image_files(folder: Path, size: int, channels: int) -> dict[Path, Tensor]:
    """Every image file in `folder`, by path, as (C, size, size) uint8; an unreadable file is an error that names
    it."""
    from PIL import Image, UnidentifiedImageError
    if not folder.is_dir():
        raise DatasetNotFound(f"{folder} does not exist")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetNotFound(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    images = {}
    for file in files:
        try:
            with Image.open(file) as image:
                images[file] = image_to_tensor(image, size, channels)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ValueError(f"cannot read {file} as an image: {exc}") from exc
    return images


def by_stem(files: dict[Path, Tensor]) -> dict[str, Tensor]:
    """The images keyed by file name without its suffix; two files of one name (a.png, a.jpg) are an error."""
    stems = {path.stem: image for path, image in files.items()}
    if len(stems) < len(files):
        raise ValueError(f"two files in {next(iter(files)).parent} share a name (such as a.png and a.jpg): a "
                         "paired folder pairs files by name")
    return stems


def load_folder_pair(root: str | Path, split: str = "train", size: int = 28, channels: int = 1,
                     paired: bool = False) -> ImageData:
    """An image-to-image dataset laid out as CycleGAN's and Pix2Pix's: <root>/trainA, trainB, testA, testB of image
    files of any size, converted to size x size with `channels` channels.
    Unpaired (CycleGAN): one ImageData with classes ("A", "B") and labels 0 / 1.
    Paired (Pix2Pix, `paired`): the B files are the targets and the A file of the same name (any suffix) is each
    one's input; a file without its partner is an error that names it."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    a, b = (read_image_files(Path(root) / f"{split}{domain}", size, channels) for domain in "AB")
    if not paired:
        return ImageData(torch.stack([*a.values(), *b.values()]), torch.tensor([0] * len(a) + [1] * len(b)),
                         ("A", "B"), f"folder:{root}", split=split)
    a, b = by_stem(a), by_stem(b)                                # shoe.png (A) pairs with shoe.jpg (B)
    if a.keys() != b.keys():
        alone = sorted(a.keys() ^ b.keys())
        raise ValueError(f"paired folders need the same file names in {split}A/ and {split}B/; without a partner: "
                         f"{', '.join(alone[:5])}{' ...' if len(alone) > 5 else ''}")
    names = sorted(b)
    return ImageData(torch.stack([b[n] for n in names]), torch.zeros(len(names), dtype=torch.long), ("image",),
                     f"paired-folder:{root}", split=split, inputs=torch.stack([a[n] for n in names]))


def load_dataset(name: str, split: str = "train", root: str | Path | None = None, pad_to: int | None = None,
                 classes: list[int | str] | None = None, size: int = 28, channels: int = 1) -> ImageData:
    """The one entry point: 'fashion-mnist', 'mnist', 'digits', 'folder' (a CycleGAN folder pair at `root`,
    resized to `size` with `channels`) or 'paired-folder' (the same layout, A and B files paired by name),
    optionally padded and restricted to classes."""
    if name in ("folder", "paired-folder"):
        if not root:
            raise ValueError(f"the {name} dataset needs --data-dir pointing at the folder holding trainA/ and trainB/")
        data = load_folder_pair(root, split, size, channels, paired=name == "paired-folder")
    elif name == "digits":
        data = load_digits(split)
    elif name in MIRRORS:
        data = load_idx_dataset(name, split, root)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    data.pad_to = pad_to
    return data.subset(classes) if classes else data
