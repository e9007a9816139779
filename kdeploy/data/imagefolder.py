"""Image trees (``train/<class>/*.jpg``, ``test/...``, optional ``val/...``) from a folder or a tarball,
decoded once into uint8 tensors and cached in the user cache; and the ``imagefolder`` dataset.

JPEGs are decoded in batches by torchvision (a few threads); other formats, and any JPEG torchvision
rejects, go through PIL. All images become RGB at one size: ``image_size`` or the first train image's.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import tarfile
import warnings
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdeploy import progress
from kdeploy.atomic import atomic_path
from kdeploy.data.datasets import LoadRequest, RawData, Split, channel_stats, register_dataset
from kdeploy.data.roots import ENV_VAR, decoded_cache_dir
from kdeploy.errors import UserError

log = logging.getLogger(__name__)

IMG_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
SPLITS = ("train", "val", "test")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
CACHE_VERSION = 1
CHUNK = 1024


@dataclass
class Listing:
    """The image files of a tree, sorted by (split, class, path); ``read(i)`` gives file i's bytes."""

    source: Path
    entries: list[tuple[str, str, str]]  # (split, class, path relative to the tree, for messages)
    fingerprint: str  # changes when the source changes (cache key)
    read: Callable[[int], torch.Tensor]


@dataclass
class ImageTree:
    splits: dict[str, Split]
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str


def is_tarball(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(TAR_SUFFIXES)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMG_EXTENSIONS


def list_folder(root: Path) -> Listing:
    rows: list[tuple[str, str, str, Path]] = []
    digest = hashlib.sha1(f"dir:{root.resolve()}".encode())
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for cls_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for dirpath, dirnames, filenames in os.walk(cls_dir, followlinks=True):
                dirnames.sort()
                for fname in sorted(filenames):
                    if _is_image(fname):
                        path = Path(dirpath, fname)
                        rows.append((split, cls_dir.name, path.relative_to(root).as_posix(), path))
    rows.sort(key=lambda r: (SPLITS.index(r[0]), r[1], r[2]))
    for _, _, rel, path in rows:
        st = path.stat()
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    paths = [r[3] for r in rows]

    def read(i: int) -> torch.Tensor:
        try:
            return torch.from_numpy(np.fromfile(paths[i], dtype=np.uint8))
        except OSError as exc:
            raise UserError(f"{paths[i]}: cannot read ({exc.strerror}); check the file") from None

    return Listing(root, [(s, c, rel) for s, c, rel, _ in rows], digest.hexdigest(), read)


def tarball_fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"tar:{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()


def list_tarball(path: Path) -> Listing:
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)  # whole-buffer gunzip: far faster than tarfile's streaming
        rows: list[tuple[str, str, str, int, int]] = []
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if not member.isfile() or not parts or not _is_image(parts[-1]):
                    continue
                for i, part in enumerate(parts[:-2]):
                    if part in SPLITS:
                        rel = "/".join(parts[i:])
                        rows.append((part, parts[i + 1], rel, member.offset_data, member.size))
                        break
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        raise UserError(f"{path}: corrupt archive ({exc}); re-download it") from None
    buf = bytearray(data)
    del data
    rows.sort(key=lambda r: (SPLITS.index(r[0]), r[1], r[2]))

    def read(i: int) -> torch.Tensor:
        _, _, rel, offset, size = rows[i]
        if size == 0:
            raise UserError(f"{path}:{rel}: empty image file; replace or delete it")
        return torch.frombuffer(buf, dtype=torch.uint8, count=size, offset=offset)

    return Listing(path, [(s, c, rel) for s, c, rel, _, _ in rows], tarball_fingerprint(path), read)


def _tv_io():  # torchvision.io, or None where its decoders are gone (deprecated in 0.29)
    try:
        import torchvision.io as tio

        return tio if hasattr(tio, "decode_jpeg") else None
    except ImportError:
        return None


def _decode_pil(blob: torch.Tensor, where: str) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob.numpy().tobytes())) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise UserError(f"{where}: corrupt or unreadable image ({exc}); replace or delete it") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


def _resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(img.shape[1:]) == size:
        return img
    y = F.interpolate(img[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return y[0].round_().clamp_(0, 255).to(torch.uint8)


class _Decoder:
    def __init__(self, listing: Listing) -> None:
        self.listing = listing
        self.tio = _tv_io()

    def where(self, i: int) -> str:
        return f"{self.listing.source}/{self.listing.entries[i][2]}"

    def one(self, i: int) -> torch.Tensor:
        blob = self.listing.read(i)
        if self.tio is not None and self.listing.entries[i][2].lower().endswith((".jpg", ".jpeg")):
            try:
                return self.tio.decode_jpeg(blob, mode=self.tio.ImageReadMode.RGB)
            except RuntimeError:
                pass  # PIL decodes what it can and names the file otherwise
        return _decode_pil(blob, self.where(i))

    def chunk(self, indices: Sequence[int], size: tuple[int, int], out: torch.Tensor) -> None:
        jpegs = [i for i in indices if self.listing.entries[i][2].lower().endswith((".jpg", ".jpeg"))]
        images: dict[int, torch.Tensor] = {}
        if self.tio is not None and jpegs:
            try:
                decoded = self.tio.decode_jpeg([self.listing.read(i) for i in jpegs], mode=self.tio.ImageReadMode.RGB)
                images.update(zip(jpegs, decoded, strict=True))
            except RuntimeError:
                pass  # one bad file fails the batch: decode one by one below to find it
        for i in indices:
            if i not in images:
                images[i] = self.one(i)
        torch.stack([_resize(images[i], size) for i in indices], out=out)


def decode_listing(listing: Listing, indices: list[int], size: tuple[int, int] | None) -> torch.Tensor:
    """Decode ``indices`` of ``listing`` into an N×3×H×W uint8 tensor (threads over chunks)."""
    decoder = _Decoder(listing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision.io's decoders are deprecated
        if size is None:
            first = decoder.one(indices[0])
            size = (int(first.shape[1]), int(first.shape[2]))
        out = torch.empty((len(indices), 3, *size), dtype=torch.uint8)
        chunks = [indices[s : s + CHUNK] for s in range(0, len(indices), CHUNK)]
        workers = max(1, min(8, os.cpu_count() or 1, len(chunks)))
        with ThreadPoolExecutor(max_workers=workers) as pool, progress.task("decoding images", len(indices)) as bar:
            futures = [
                pool.submit(decoder.chunk, chunk, size, out[k * CHUNK : k * CHUNK + len(chunk)])
                for k, chunk in enumerate(chunks)
            ]
            for future, chunk in zip(futures, chunks, strict=True):
                future.result()
                bar.update(len(chunk))
    return out


def _cache_path(source: Path, fingerprint: str, size: tuple[int, int] | None) -> Path:
    key = hashlib.sha1(f"{CACHE_VERSION}\0{fingerprint}\0{size}".encode()).hexdigest()[:20]
    stem = source.name.split(".")[0] or "images"
    return decoded_cache_dir() / f"{stem}-{key}.pt"


def _cache_load(path: Path, source: str) -> ImageTree | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if blob.get("version") != CACHE_VERSION:
            return None
        splits = {s: Split(blob[f"images/{s}"], blob[f"labels/{s}"]) for s in blob["splits"]}
        return ImageTree(splits, list(blob["classes"]), tuple(blob["mean"]), tuple(blob["std"]), source)
    except Exception as exc:  # a bad cache is only a miss
        log.warning("ignoring unreadable cache %s (%s)", path, exc)
        return None


def _cache_save(path: Path, tree: ImageTree) -> None:
    blob: dict[str, object] = {
        "version": CACHE_VERSION,
        "source": tree.source,
        "classes": tree.classes,
        "mean": list(tree.mean),
        "std": list(tree.std),
        "splits": list(tree.splits),
    }
    for name, split in tree.splits.items():
        blob[f"images/{name}"], blob[f"labels/{name}"] = split.images, split.labels
    try:
        with atomic_path(path) as tmp:
            torch.save(blob, tmp)
    except (UserError, OSError) as exc:
        log.warning("could not cache decoded images at %s (%s); the next load decodes again", path, exc)


def load_image_tree(
    name: str, source: Path, image_size: tuple[int, int] | None = None, *, cache: bool = True
) -> ImageTree:
    """Decode a folder or tarball with ``train/`` and ``test/`` (optionally ``val/``) class folders."""
    if is_tarball(source):  # the key comes from the file's stat: a cache hit never opens the archive
        listing = None
        cache_file = _cache_path(source, tarball_fingerprint(source), image_size)
    else:
        listing = list_folder(source)
        cache_file = _cache_path(source, listing.fingerprint, image_size)
    if cache and (tree := _cache_load(cache_file, str(source))) is not None:
        return tree
    if listing is None:
        listing = list_tarball(source)
    by_split: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i, (split, _, _) in enumerate(listing.entries):
        by_split[split].append(i)
    classes = sorted({listing.entries[i][1] for i in by_split["train"]})
    if not classes:
        raise UserError(f"{name}: {source} has no images under train/<class>/; expected train/ and test/ class folders")
    if not by_split["test"]:
        raise UserError(f"{name}: {source} has no images under test/<class>/; add a test/ split with the same classes")
    for split in ("val", "test"):
        unknown = sorted({listing.entries[i][1] for i in by_split[split]} - set(classes))
        if unknown:
            raise UserError(
                f"{name}: {source}/{split} has classes not in train/: {', '.join(unknown)}; fix the folders"
            )
    index = {c: k for k, c in enumerate(classes)}
    order = [i for s in SPLITS for i in by_split[s]]
    images = decode_listing(listing, order, image_size)
    labels = torch.tensor([index[listing.entries[i][1]] for i in order], dtype=torch.int64)
    splits: dict[str, Split] = {}
    start = 0
    for split in SPLITS:
        n = len(by_split[split])
        if n or split != "val":
            splits[split] = Split(images[start : start + n], labels[start : start + n])
        start += n
    mean, std = channel_stats(splits["train"].images)
    tree = ImageTree(splits, classes, mean, std, str(source))
    if cache:
        _cache_save(cache_file, tree)
    return tree


@register_dataset("imagefolder")
def load_imagefolder(request: LoadRequest) -> RawData:
    root = request.root or (Path(os.environ[ENV_VAR]).expanduser() if os.environ.get(ENV_VAR) else None)
    if root is None:
        raise UserError("imagefolder: no folder given; pass --data-root DIR (with train/ and test/ class folders)")
    if not (root.is_dir() or is_tarball(root)):
        raise UserError(f"imagefolder: {root} is not a folder or a .tar/.tar.gz; pass --data-root DIR")
    if root.is_dir() and not (root / "train").is_dir():
        raise UserError(
            f"imagefolder: {root} has no train/ folder; expected train/<class>/*.jpg and test/<class>/*.jpg"
        )
    tree = load_image_tree("imagefolder", root, request.image_size)
    return RawData(
        train=tree.splits["train"],
        test=tree.splits["test"],
        val=tree.splits.get("val"),
        classes=tree.classes,
        mean=tree.mean,
        std=tree.std,
        source=tree.source,
    )
