"""kdeploy.data: loading (IDX, CIFAR layouts, ImageFolder), root resolution, errors, augmentation, batches."""

from __future__ import annotations

import gzip
import io
import pickle
import socket
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdeploy.data import (
    Augment,
    Split,
    augment_batch,
    count_batches,
    iterate_batches,
    iterate_batches_with_views,
    list_datasets,
    load_dataset,
    normalize,
    roots,
)
from kdeploy.data import download as dl
from kdeploy.data.transforms import augment_with_views, view_images
from kdeploy.errors import UserError

REAL_MNIST = Path(__file__).resolve().parents[2] / "shared/data/mnist"
SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real user cache, KDEPLOY_DATA or system folders unless a test asks for them."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("KDEPLOY_DATA", raising=False)
    monkeypatch.setattr(roots, "SYSTEM_DIRS", (tmp_path / "system",))
    return tmp_path


@pytest.fixture
def real_mnist() -> Path:
    if not (REAL_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST files not found in {REAL_MNIST}")
    return REAL_MNIST


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(folder: Path, n_train: int = 30, n_test: int = 8, *, gz: bool = True, marker: int = 0) -> Path:
    """Tiny 4×4 IDX set: image i has pixel (0, 0) = i and pixel (0, 1) = marker; label i % 10."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 4, 4), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n)
        images[:, 0, 1] = marker
        labels = np.arange(n) % 10
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1))
            else:
                (folder / name).write_bytes(data)
    return folder


def write_jpeg(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (8, 8), fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, fmt, quality=95)


def write_tree(root: Path, classes: list[str], per_class: int = 2, splits: tuple[str, ...] = ("train", "test")) -> Path:
    for split in splits:
        for k, cls in enumerate(classes):
            for j in range(per_class):
                write_jpeg(root / split / cls / f"{j:04d}.jpg", (20 * k, 10 * j, 200))
    return root


# --- real MNIST / Fashion-MNIST -------------------------------------------------------------------------


def test_real_mnist_shapes_and_types(real_mnist: Path) -> None:
    ds = load_dataset("mnist", root=real_mnist, limit=256)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (256, 256, 256)
    for split in (ds.train, ds.val, ds.test):
        assert split.images.dtype == torch.uint8 and split.images.is_contiguous()
        assert split.images.shape[1:] == (1, 28, 28)
        assert split.labels.dtype == torch.int64
        assert int(split.labels.min()) >= 0 and int(split.labels.max()) <= 9
    assert ds.num_classes == 10 and ds.in_shape == (1, 28, 28)
    assert ds.mean == (0.1307,) and ds.std == (0.3081,)
    assert ds.source == str(real_mnist)


def test_real_mnist_full_sizes(real_mnist: Path) -> None:
    start = time.perf_counter()
    ds = load_dataset("mnist", root=real_mnist, val_size=0.1)
    assert time.perf_counter() - start < 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (54000, 6000, 10000)
    assert set(ds.test.labels.bincount().tolist()) and int(ds.test.labels.bincount().min()) > 800


def test_real_fashion_mnist_from_system_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (SYSTEM_FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    monkeypatch.setattr(roots, "SYSTEM_DIRS", (SYSTEM_FASHION.parent,))
    ds = load_dataset("fashion_mnist", limit=64)
    assert ds.source == str(SYSTEM_FASHION)
    assert ds.classes[0] == "T-shirt/top" and ds.mean == (0.2860,)


# --- validation split ---------------------------------------------------------------------------------------


def _ids(split: Split) -> set[int]:
    return set(split.images[:, 0, 0, 0].tolist())


def test_val_split_disjoint_and_seeded(tmp_path: Path) -> None:
    root = write_idx(tmp_path / "d", n_train=50)
    a = load_dataset("mnist", root=root, val_size=10, seed=1)
    b = load_dataset("mnist", root=root, val_size=10, seed=1)
    c = load_dataset("mnist", root=root, val_size=10, seed=2)
    assert len(a.val) == 10 and len(a.train) == 40
    assert _ids(a.train).isdisjoint(_ids(a.val)) and _ids(a.train) | _ids(a.val) == set(range(50))
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    assert _ids(a.val) != _ids(c.val)
    assert a.train.images[:, 0, 0, 0].tolist() == sorted(_ids(a.train))  # original order kept
    frac = load_dataset("mnist", root=root, val_size=0.2)
    assert len(frac.val) == 10
    empty = load_dataset("mnist", root=root, val_size=0)
    assert len(empty.val) == 0 and empty.val.images.shape == (0, 1, 4, 4) and len(empty.train) == 50
    limited = load_dataset("mnist", root=root, val_size=10, limit=4)
    assert (len(limited.train), len(limited.val), len(limited.test)) == (4, 4, 4)


def test_every_seed_has_the_same_table_pool(tmp_path: Path) -> None:
    """The teacher table covers train and val together in source order: the same images whatever the seed's val
    split, each training sample at its row; without a val split the pool is the train split itself."""
    root = write_idx(tmp_path / "d", n_train=50)
    pools = []
    for seed in (1, 2):
        data = load_dataset("mnist", root=root, val_size=10, seed=seed)
        pool, rows = data.table_pool()
        assert data.table_pool_size() == len(pool) == 50
        assert pool.images[:, 0, 0, 0].tolist() == list(range(50))
        assert pool.labels.tolist() == [i % 10 for i in range(50)]
        assert torch.equal(pool.images[rows], data.train.images) and torch.equal(pool.labels[rows], data.train.labels)
        assert data.carving is not None and data.carving.val.tolist() == sorted(_ids(data.val))
        pools.append(rows.tolist())
    assert pools[0] != pools[1]
    empty = load_dataset("mnist", root=root, val_size=0)
    assert empty.table_pool()[0] is empty.train and empty.table_pool_size() == 50
    limited = load_dataset("mnist", root=root, val_size=10, limit=4)
    pool, rows = limited.table_pool()
    assert len(pool) == limited.table_pool_size() == 8 and torch.equal(pool.images[rows], limited.train.images)
    assert limited.carving is not None and limited.carving.train.tolist() == limited.train.images[:, 0, 0, 0].tolist()


@pytest.mark.parametrize("bad", [50, 60, 1.0, 1.5, -1, True, "10"])
def test_bad_val_size(tmp_path: Path, bad: object) -> None:
    root = write_idx(tmp_path / "d", n_train=50)
    with pytest.raises(UserError, match="val_size"):
        load_dataset("mnist", root=root, val_size=bad)  # type: ignore[arg-type]


# --- root resolution -----------------------------------------------------------------------------------------


def test_root_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = write_idx(tmp_path / "explicit", marker=1)
    write_idx(tmp_path / "env" / "mnist", marker=2)
    cache = write_idx(tmp_path / "xdg" / "kdeploy" / "data" / "MNIST" / "raw", marker=3)
    system = write_idx(tmp_path / "system" / "mnist", marker=4)
    monkeypatch.setenv("KDEPLOY_DATA", str(tmp_path / "env"))

    def marker(**kw: object) -> int:
        return int(load_dataset("mnist", val_size=0, **kw).train.images[0, 0, 0, 1])  # type: ignore[arg-type]

    assert marker(root=explicit) == 1
    assert marker() == 2
    monkeypatch.delenv("KDEPLOY_DATA")
    assert marker() == 3
    for f in cache.iterdir():
        f.unlink()
    assert marker() == 4
    assert load_dataset("mnist", val_size=0).source == str(system)


def test_explicit_root_is_the_only_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx(tmp_path / "env" / "mnist")
    monkeypatch.setenv("KDEPLOY_DATA", str(tmp_path / "env"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"looked in: [^,]*empty, each"):
        load_dataset("mnist", root=tmp_path / "empty")


@pytest.mark.parametrize("sub", ["fashion_mnist", "fashion-mnist", "FashionMNIST", "FashionMNIST/raw", "."])
def test_fashion_aliases(tmp_path: Path, sub: str) -> None:
    write_idx(tmp_path / "base" / sub)
    ds = load_dataset("fashion_mnist", root=tmp_path / "base", val_size=5)
    assert ds.source == str(tmp_path / "base" / sub)  # pathlib drops "."


def test_uncompressed_idx(tmp_path: Path) -> None:
    ds = load_dataset("mnist", root=write_idx(tmp_path / "raw", gz=False), val_size=5)
    assert len(ds.train) == 25 and ds.train.images.shape[1:] == (1, 4, 4)


def test_missing_data_lists_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDEPLOY_DATA", str(tmp_path / "envdir"))
    partial = tmp_path / "envdir" / "fashion-mnist"
    partial.mkdir(parents=True)
    (partial / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(UserError) as info:
        load_dataset("fashion_mnist")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("fashion_mnist: no data found (looked in: ")
    for place in (tmp_path / "envdir", tmp_path / "xdg" / "kdeploy" / "data", tmp_path / "system"):
        assert str(place) in msg
    assert "lacks" in msg and "--data-root DIR" in msg and "KDEPLOY_DATA" in msg and "data.download: true" in msg


# --- corrupt files -------------------------------------------------------------------------------------------


def test_corrupt_idx_size(tmp_path: Path) -> None:
    root = write_idx(tmp_path / "d")
    target = root / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(target.read_bytes())
    target.write_bytes(gzip.compress(data[:100]))
    with pytest.raises(
        UserError, match=r"train-images-idx3-ubyte.gz: corrupt IDX file \(expected 496 bytes, got 100\)"
    ):
        load_dataset("mnist", root=root)


def test_corrupt_idx_magic_and_gzip(tmp_path: Path) -> None:
    root = write_idx(tmp_path / "d", gz=False)
    (root / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03" + bytes(20))
    with pytest.raises(UserError, match="bad magic 0x00000803, expected 0x00000801.*re-download"):
        load_dataset("mnist", root=root, val_size=5)
    root2 = write_idx(tmp_path / "e")
    target = root2 / "train-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:20])
    with pytest.raises(UserError, match="corrupt IDX file .*gzip"):
        load_dataset("mnist", root=root2, val_size=5)


# --- download failures (no network, or a server that never answers) -----------------------------------------


def test_download_failure_is_one_line_and_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepts connections (kernel backlog) but never answers
    port = server.getsockname()[1]
    monkeypatch.setattr(dl, "TIMEOUT_S", 1.0)
    monkeypatch.setattr(tvd.MNIST, "mirrors", [f"http://127.0.0.1:{port}/"])
    start = time.perf_counter()
    try:
        with pytest.raises(UserError) as info:
            load_dataset("mnist", download=True)
    finally:
        server.close()
    assert time.perf_counter() - start < 10
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("mnist: download failed") and "timed out" in msg

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    free_port = closed.getsockname()[1]
    closed.close()
    monkeypatch.setattr(tvd.CIFAR10, "url", f"http://127.0.0.1:{free_port}/cifar-10-python.tar.gz")
    with pytest.raises(UserError, match="cifar10: download failed .*refused"):
        load_dataset("cifar10", download=True)


# --- CIFAR layouts -----------------------------------------------------------------------------------------


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_cifar10_pickle_batches(tmp_path: Path) -> None:
    folder = tmp_path / "base" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 9]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_CLASSES}))
    ds = load_dataset("cifar10", root=tmp_path / "base", val_size=4)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (16, 4, 4)
    assert ds.in_shape == (3, 32, 32) and ds.classes == CIFAR_CLASSES
    assert ds.mean == (0.4914, 0.4822, 0.4465)


def test_cifar10_tarball_and_cache(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "tree", CIFAR_CLASSES[::-1], per_class=1)  # created in reverse: order must sort
    (tmp_path / "c10").mkdir()
    with tarfile.open(tmp_path / "c10" / "cifar10-jpg.tar.gz", "w:gz") as tar:
        tar.add(tree / "train", arcname="train")
        tar.add(tree / "test", arcname="test")
    ds = load_dataset("cifar10", root=tmp_path / "c10", val_size=0)
    assert ds.classes == CIFAR_CLASSES and ds.in_shape == (3, 32, 32)  # 8×8 JPEGs resized to 32×32
    assert ds.train.labels.tolist() == list(range(10))
    assert ds.source.endswith("cifar10-jpg.tar.gz")
    cached = list((tmp_path / "xdg" / "kdeploy" / "decoded").glob("cifar10-jpg-*.pt"))
    assert len(cached) == 1
    again = load_dataset("cifar10", root=tmp_path / "c10", val_size=0)
    assert torch.equal(again.train.images, ds.train.images)
    # the ImageFolder layout directly, and the tarball given as the root itself
    folder = load_dataset("cifar10", root=tree, val_size=0)
    assert torch.equal(folder.test.labels, ds.test.labels)
    direct = load_dataset("cifar10", root=tmp_path / "c10" / "cifar10-jpg.tar.gz", val_size=0)
    assert torch.equal(direct.train.images, ds.train.images)
    # a truncated archive is a one-line error
    (tmp_path / "bad").mkdir()
    data = (tmp_path / "c10" / "cifar10-jpg.tar.gz").read_bytes()
    (tmp_path / "bad" / "cifar10-jpg.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cifar10-jpg.tar.gz: corrupt archive .*re-download it"):
        load_dataset("cifar10", root=tmp_path / "bad")


# --- ImageFolder ---------------------------------------------------------------------------------------------


def test_imagefolder_loads(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "imgs", ["dog", "cat", "bird"], per_class=3)
    write_jpeg(root / "train" / "cat" / "big.png", (255, 0, 0), size=(16, 12), fmt="PNG")  # other size, PNG
    Image.new("L", (8, 8), 77).save(root / "test" / "bird" / "gray.jpg")  # grayscale becomes RGB
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    ds = load_dataset("imagefolder", root=root, val_size=2)
    assert ds.classes == ["bird", "cat", "dog"] and ds.num_classes == 3
    assert ds.in_shape == (3, 8, 8)
    assert len(ds.train) + len(ds.val) == 10 and len(ds.test) == 10
    assert sorted(torch.cat([ds.train.labels, ds.val.labels]).tolist()) == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert len(ds.mean) == 3 and all(0 < s < 1 for s in ds.std)
    resized = load_dataset("imagefolder", root=root, val_size=0, image_size=6)
    assert resized.in_shape == (3, 6, 6)


def test_imagefolder_with_val_folder(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "imgs", ["a", "b"], per_class=2, splits=("train", "val", "test"))
    ds = load_dataset("imagefolder", root=root, val_size=1000)  # val/ wins over val_size
    assert (len(ds.train), len(ds.val), len(ds.test)) == (4, 4, 4)


def test_imagefolder_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "train" / "cat").mkdir(parents=True)
    (empty / "test" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match="no images under train"):
        load_dataset("imagefolder", root=empty)
    with pytest.raises(UserError, match="no train/ folder"):
        load_dataset("imagefolder", root=tmp_path)
    with pytest.raises(UserError, match="no folder given"):
        load_dataset("imagefolder")
    root = write_tree(tmp_path / "imgs", ["a", "b"], per_class=2)
    bad = root / "train" / "b" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(UserError, match=r"train/b/0001.jpg: corrupt or unreadable image") as info:
        load_dataset("imagefolder", root=root)
    assert "\n" not in str(info.value)


def test_registry() -> None:
    assert {"mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder"} <= set(list_datasets())
    with pytest.raises(UserError, match="did you mean 'mnist'"):
        load_dataset("mnsit")


# --- augmentation ---------------------------------------------------------------------------------------------


def _batch(n: int = 64, c: int = 3, h: int = 8, w: int = 8) -> torch.Tensor:
    return torch.randint(1, 256, (n, c, h, w), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_augment_schema() -> None:
    assert not Augment().enabled and Augment(flip=True).enabled and Augment(translate=2).enabled
    with pytest.raises(ValueError):
        Augment(crop_padding=-1)
    with pytest.raises(ValueError):
        Augment(jitter=2)  # type: ignore[call-arg]


def test_flip_really_flips() -> None:
    x = _batch()
    out = augment_batch(x, Augment(flip=True), torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert bool((same | flipped).all()) and 0 < int(flipped.sum()) < len(x)
    assert augment_batch(x, Augment(), torch.Generator()) is x


def test_augment_reports_its_views() -> None:
    """Same draws as augment_batch, and each image's view index names exactly the image it became (the cached
    table's view): with flips only, 0 as stored and 1 mirrored; with shifts, ``view_images`` remakes every image."""
    x = _batch(n=32)
    out, view = augment_with_views(x, Augment(flip=True), torch.Generator().manual_seed(1))
    assert torch.equal(out, augment_batch(x, Augment(flip=True), torch.Generator().manual_seed(1)))
    assert view is not None and view.dtype == torch.int64 and set(view.tolist()) == {0, 1}
    flipped = view == 1
    assert torch.equal(out[flipped], x[flipped].flip(3)) and torch.equal(out[~flipped], x[~flipped])
    aug = Augment(crop_padding=1, translate=2, flip=True)
    out, view = augment_with_views(x, aug, torch.Generator().manual_seed(4))
    assert torch.equal(out, augment_batch(x, aug, torch.Generator().manual_seed(4)))
    assert view is not None and int(view.min()) >= 0 and int(view.max()) < aug.num_views == 7 * 7 * 2
    assert len(set(view.tolist())) > 20  # really random
    for i, v in enumerate(view.tolist()):
        assert torch.equal(out[i], view_images(x[i : i + 1], aug, v)[0]), f"image {i}, view {v}"
    assert augment_with_views(x, Augment(), torch.Generator())[1] is None
    assert (Augment().num_views, Augment(flip=True).num_views, Augment(translate=2).num_views) == (1, 2, 25)
    with pytest.raises(ValueError, match="not one of the 25 views"):
        view_images(x, Augment(translate=2), 25)


def test_crop_padding_is_a_zero_filled_crop() -> None:
    x = _batch(n=32)
    p = 2
    out = augment_batch(x, Augment(crop_padding=p), torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    offsets = set()
    for i in range(len(x)):
        matches = [
            (oy, ox)
            for oy in range(2 * p + 1)
            for ox in range(2 * p + 1)
            if torch.equal(out[i], padded[i, :, oy : oy + 8, ox : ox + 8])
        ]
        assert matches, f"sample {i} is not a crop of the padded image"
        offsets.add(matches[0])
    assert len(offsets) > 5  # really random


def test_translate_keeps_shape_and_is_seeded() -> None:
    x = _batch()
    a = augment_batch(x, Augment(translate=3, flip=True, crop_padding=1), torch.Generator().manual_seed(5))
    b = augment_batch(x, Augment(translate=3, flip=True, crop_padding=1), torch.Generator().manual_seed(5))
    assert a.shape == x.shape and a.dtype == torch.uint8 and torch.equal(a, b)
    assert not torch.equal(a, x)
    nonzero = (a > 0).flatten(1).sum(1)
    assert int(nonzero.min()) >= 3 * 3 * 3  # at most 4 pixels of shift: something of the image is always left


# --- batches ---------------------------------------------------------------------------------------------------


def _split(n: int) -> Split:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return Split(images, torch.arange(n, dtype=torch.int64) % 7)


def test_iterate_batches_covers_every_index_once() -> None:
    split = _split(103)
    seen = []
    for x, y, idx in iterate_batches(split, 16, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 2, 2) and y.dtype == torch.int64
        assert torch.equal(y, split.labels[idx])
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(103)) and seen != list(range(103))
    plain = [idx for _, _, idx in iterate_batches(split, 50, shuffle=False)]
    assert [len(i) for i in plain] == [50, 50, 3] and torch.equal(torch.cat(plain), torch.arange(103))
    dropped = list(iterate_batches(split, 50, shuffle=False, drop_last=True))
    assert len(dropped) == 2 == count_batches(103, 50, drop_last=True)
    assert count_batches(103, 50) == 3


def test_batches_with_views_are_the_same_batches() -> None:
    split = _split(40)
    aug = Augment(flip=True)
    plain = list(iterate_batches(split, 16, shuffle=True, generator=torch.Generator().manual_seed(2), augment=aug))
    views = list(
        iterate_batches_with_views(split, 16, shuffle=True, generator=torch.Generator().manual_seed(2), augment=aug)
    )
    assert len(plain) == len(views) == 3
    for (x, y, idx), (x2, y2, idx2, view) in zip(plain, views, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(idx, idx2)
        assert view is not None and view.shape == idx.shape
    assert next(iterate_batches_with_views(split, 16, shuffle=False, augment=Augment()))[3] is None


def test_shards_disjoint_and_equal() -> None:
    split = _split(10)
    parts = []
    for rank in range(3):
        gen = torch.Generator().manual_seed(7)  # every rank uses the same seed
        batches = iterate_batches(split, 3, shuffle=True, generator=gen, shard=(rank, 3))
        parts.append([i for _, _, b in batches for i in b.tolist()])
    assert [len(p) for p in parts] == [4, 4, 4]
    assert set().union(*map(set, parts)) == set(range(10))  # 2 padded duplicates, nothing missing
    trimmed = []
    for rank in range(3):
        gen = torch.Generator().manual_seed(7)
        batches = iterate_batches(split, 3, shuffle=True, generator=gen, shard=(rank, 3), drop_last=True)
        trimmed.append([i for _, _, b in batches for i in b.tolist()])
    assert [len(p) for p in trimmed] == [3, 3, 3]
    flat = [i for p in trimmed for i in p]
    assert len(set(flat)) == 9
    assert count_batches(10, 3, shard=(0, 3)) == 2 and count_batches(10, 3, drop_last=True, shard=(0, 3)) == 1


def test_ranks_draw_their_own_augmentation() -> None:
    """Shards of one epoch share the permutation but not the crop/flip randomness."""
    image = torch.randint(0, 256, (1, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    split = Split(image.expand(64, 3, 16, 16).contiguous(), torch.zeros(64, dtype=torch.int64))  # one image 64 times

    def first_batch(rank: int, world: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(3)
        batches = iterate_batches(
            split, 32, shuffle=True, generator=gen, augment=Augment(translate=3), shard=(rank, world)
        )
        return next(iter(batches))[0]

    assert not torch.equal(first_batch(0, 2), first_batch(1, 2))
    torch.testing.assert_close(first_batch(1, 2), first_batch(1, 2))  # reproducible per rank


def test_normalisation() -> None:
    split = _split(20)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    x, _, idx = next(iter(iterate_batches(split, 20, shuffle=False, mean=mean, std=std)))
    raw = split.images[idx].float() / 255
    expected = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(normalize(split.images, 0.5, 0.5), split.images.float() / 127.5 - 1)
    aug = list(
        iterate_batches(split, 8, shuffle=True, generator=torch.Generator().manual_seed(0), augment=Augment(flip=True))
    )
    assert sum(len(i) for _, _, i in aug) == 20


def test_tarball_bytes_roundtrip(tmp_path: Path) -> None:
    """A tarball with a leading folder and a hidden AppleDouble file still loads."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for split in ("train", "test"):
            for cls in ("x", "y"):
                img = io.BytesIO()
                Image.new("RGB", (4, 4), (9, 9, 9)).save(img, "PNG")
                for name in (f"top/{split}/{cls}/a.png", f"top/{split}/{cls}/._a.png"):
                    info = tarfile.TarInfo(name)
                    info.size = len(img.getvalue())
                    tar.addfile(info, io.BytesIO(img.getvalue()))
    (tmp_path / "set.tar").write_bytes(buf.getvalue())
    ds = load_dataset("imagefolder", root=tmp_path / "set.tar", val_size=0)
    assert ds.classes == ["x", "y"] and len(ds.train) == 2 and len(ds.test) == 2
    assert int(ds.train.images.max()) == 9


def test_cutout_zeroes_one_clipped_square_after_the_same_shifts() -> None:
    """Cutout zeroes an N×N square per image (clipped at the borders, centred anywhere) on top of exactly the
    shifts and flips a recipe without it draws; its images are not tabular, so no teacher table stands in."""
    x = _batch(n=64, h=12, w=12)  # every pixel is nonzero, so zeros are the square
    aug = Augment(translate=1, flip=True, cutout=4)
    out, view = augment_with_views(x, aug, torch.Generator().manual_seed(7))
    plain, plain_view = augment_with_views(x, Augment(translate=1, flip=True), torch.Generator().manual_seed(7))
    assert torch.equal(view, plain_view) and aug.enabled and not aug.tabular and Augment(translate=1).tabular
    zero = out == 0
    assert torch.equal(zero.all(1), zero.any(1))  # one square through every channel
    kept = ~zero
    assert torch.equal(out[kept], plain[kept])  # only the square changed, shifts and flips as before
    sizes = set()
    for i in range(len(x)):
        cut = zero[i, 0] & (plain[i, 0] != 0)  # the square inside the shifted image
        rows, cols = cut.any(1).nonzero().flatten(), cut.any(0).nonzero().flatten()
        assert int(cut.sum()) == len(rows) * len(cols) <= 16, f"image {i}: not one square"
        sizes.add((len(rows), len(cols)))
    assert (4, 4) in sizes and len(sizes) > 2  # whole squares inside, clipped ones at the borders
    only, only_view = augment_with_views(x, Augment(cutout=3), torch.Generator().manual_seed(1))
    assert only_view is not None and not bool(only_view.any()) and int((only == 0).sum()) > 0
