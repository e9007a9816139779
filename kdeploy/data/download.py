"""Downloads through torchvision's URLs and helpers, with a socket timeout and one-line errors.

Files are fetched into a temporary folder and moved into place only when complete (and checksummed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
from pathlib import Path

from kdeploy.errors import UserError
from kdeploy.timeouts import socket_timeout

TIMEOUT_S = 15.0  # per socket operation: a dead or silent server fails after this, a slow one keeps going


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return f"timed out after {TIMEOUT_S:g} s"
    text = " ".join(str(reason).split()) or type(reason).__name__
    return text[:200]


def _fail(name: str, url: str, exc: BaseException, target: Path, more: str = "") -> UserError:
    return UserError(
        f"{name}: download failed ({url}: {_reason(exc)}{more}); check the network, or copy the files by hand "
        f"into {target} (or any folder passed as --data-root DIR)"
    )


def _tmpdir(parent: Path, name: str) -> tempfile.TemporaryDirectory[str]:
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(prefix=f".download-{name}-", dir=parent)
    except OSError as exc:
        raise UserError(f"{name}: cannot write to {parent} ({exc.strerror}); pass a writable --data-root DIR") from None


def download_idx(name: str, tv_class: str, target: Path) -> None:
    """Fetch the four IDX ``.gz`` files of torchvision's ``tv_class`` (MNIST, FashionMNIST) into
    ``target/<tv_class>/raw``, trying each mirror in turn."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_url

    cls = getattr(tvd, tv_class)
    raw = target / tv_class / "raw"
    with socket_timeout(TIMEOUT_S), _tmpdir(target, name) as tmp:
        for filename, md5 in cls.resources:
            if (raw / filename).is_file():
                continue
            errors: list[tuple[str, BaseException]] = []
            for mirror in cls.mirrors:
                url = f"{mirror}{filename}"
                try:
                    download_url(url, tmp, filename=filename, md5=md5)
                except Exception as exc:  # any network, HTTP or checksum failure
                    errors.append((url, exc))
                    continue
                raw.mkdir(parents=True, exist_ok=True)
                os.replace(Path(tmp) / filename, raw / filename)
                break
            else:
                url, exc = errors[0]
                more = f", and {len(errors) - 1} other mirror(s)" if len(errors) > 1 else ""
                raise _fail(name, url, exc, raw, more)


def download_cifar(name: str, tv_class: str, target: Path) -> None:
    """Fetch and extract torchvision's CIFAR archive into ``target/<base_folder>`` (python pickle batches)."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive

    cls = getattr(tvd, tv_class)
    final = target / cls.base_folder
    with socket_timeout(TIMEOUT_S), _tmpdir(target, name) as tmp:
        try:
            download_and_extract_archive(cls.url, tmp, filename=cls.filename, md5=cls.tgz_md5, remove_finished=True)
        except Exception as exc:
            raise _fail(name, cls.url, exc, target) from None
        if final.exists():
            shutil.rmtree(final)
        os.replace(Path(tmp) / cls.base_folder, final)
