"""Reading the Omniglot images (Lake, Salakhutdinov and Tenenbaum, 2015) from local files.

Nothing is downloaded (get the archives from https://github.com/brendenlake/omniglot,
folder ``python/``; see :doc:`/meta`). :func:`load_omniglot` accepts

* an official archive (``images_background.zip``, ``images_evaluation.zip``, or the small
  ones), read in place with :mod:`zipfile`;
* a directory holding such archives and/or the extracted tree
  ``<split>/<alphabet>/<character>/<id>_<drawer>.png``.

Each image is identified by ``(alphabet, character, file name)``, so an archive and its
extracted copy, or two archives sharing alphabets, are merged without duplicates. Images
are decoded with Pillow, resized to ``image_size × image_size`` (Lanczos filter, on the
8-bit grey image), scaled to [0, 1] and **inverted so that strokes are 1 and the
background 0**. Decoded arrays are cached in memory per (files, size), so building the
train, validation and test samplers decodes once.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..outer.errors import MissingFileError, UsageError
from ..validation import integer

__all__ = ["ENV_VAR", "OmniglotImages", "clear_cache", "load_omniglot", "omniglot_path"]

#: Environment variable naming the Omniglot archive or folder when no path is given.
ENV_VAR = "BILEVEL_OMNIGLOT"

_CACHE: dict[tuple, OmniglotImages] = {}


@dataclass(frozen=True)
class OmniglotImages:
    """Decoded Omniglot images grouped by character.

    Attributes
    ----------
    images : float32 array, shape ``(N, s, s)``
        Strokes 1, background 0, values in [0, 1].
    character : int array, shape ``(N,)``
        Index into ``characters`` of each image.
    characters : tuple of (alphabet, character) pairs
        Sorted by alphabet then character name.
    alphabets : tuple of str
        Sorted alphabet names.
    """

    images: np.ndarray
    character: np.ndarray
    characters: tuple[tuple[str, str], ...]
    alphabets: tuple[str, ...]

    def members(self) -> list[np.ndarray]:
        """Image indices of each character, in file-name order."""
        order = np.argsort(self.character, kind="stable")
        bounds = np.searchsorted(self.character[order], np.arange(len(self.characters) + 1))
        return [order[bounds[c] : bounds[c + 1]] for c in range(len(self.characters))]


def _sources(path: Path) -> tuple[list[Path], list[Path]]:
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise UsageError(f"Omniglot path {str(path)!r} is a file but not a zip archive; "
                             "pass a zip archive or a folder of archives or PNG images")
        return [path], []
    if path.is_dir():
        return sorted(path.glob("*.zip")), sorted(path.rglob("*.png"))
    raise MissingFileError(f"Omniglot path {str(path)!r} does not exist (nothing is "
                           "downloaded: pass the folder or zip archive of the images)")


def _key(parts: tuple[str, ...]) -> tuple[str, str, str] | None:
    if len(parts) < 3 or not parts[-1].lower().endswith(".png"):
        return None
    return parts[-3], parts[-2], parts[-1]


def _decode(data: bytes, size: int) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError(
            "decoding Omniglot PNGs needs Pillow: pip install \"bilevel[meta]\" (or pillow)"
        ) from err

    with Image.open(io.BytesIO(data)) as im:
        small = im.convert("L").resize((size, size), Image.Resampling.LANCZOS)
    return 1.0 - np.asarray(small, dtype=np.float32) / 255.0


def _image(archive: zipfile.ZipFile | None, name: str, size: int) -> np.ndarray:
    """One decoded image; a damaged entry is an error naming it and its archive."""
    where = name if archive is None else f"{name!r} in {archive.filename!r}"
    try:
        data = archive.read(name) if archive is not None else Path(name).read_bytes()
        return _decode(data, size)
    except (OSError, ValueError, SyntaxError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        # Pillow raises these unrelated types on damaged data
        raise UsageError(f"cannot read the Omniglot image {where} ({type(err).__name__}: "
                         f"{err}); replace or delete the damaged file") from err


def clear_cache() -> None:
    """Forget the decoded images held in memory."""
    _CACHE.clear()


def omniglot_path(path: str | os.PathLike | None = None) -> Path:
    """Where the Omniglot images are: ``path`` if given, else ``$BILEVEL_OMNIGLOT``.

    Raises :class:`~bilevel.outer.MissingFileError` (a ``FileNotFoundError``) saying where
    to get the archives when neither is set.
    """
    chosen = path if path is not None else os.environ.get(ENV_VAR) or None
    if chosen is None:
        raise MissingFileError(
            f"no Omniglot path given and ${ENV_VAR} is not set: download "
            "images_background.zip and images_evaluation.zip from "
            "https://github.com/brendenlake/omniglot (folder python/), then pass their "
            f"folder or set {ENV_VAR}=/path/to/that/folder"
        )
    return Path(chosen).expanduser().resolve()


def load_omniglot(path: str | os.PathLike | None = None,
                  image_size: int = 28) -> OmniglotImages:
    """Decode every Omniglot image found at ``path`` (cached).

    Parameters
    ----------
    path
        A zip archive, or a directory of archives and/or extracted
        ``<split>/<alphabet>/<character>/*.png`` folders. Default: the environment
        variable ``BILEVEL_OMNIGLOT`` (:func:`omniglot_path`).
    image_size
        Side of the square output images (28 as in MAML).

    Returns
    -------
    OmniglotImages
        Cost: one PNG decode and resize per distinct image (about 0.2 ms each); memory
        ``4·N·image_size²`` bytes.

    Raises
    ------
    MissingFileError
        When ``path`` does not exist or holds no Omniglot images (a ``FileNotFoundError``
        and a :class:`bilevel.outer.UsageError`).
    UsageError
        When ``path`` is a file but not a zip archive, or an image cannot be decoded (the
        message names the image and its archive).
    """
    image_size = integer(1)("image_size", image_size)
    root = omniglot_path(path)
    zips, pngs = _sources(root)
    cache_key = (_stamp(zips, pngs), image_size)
    if cache_key not in _CACHE:
        with ExitStack() as stack:
            archives = [stack.enter_context(zipfile.ZipFile(z)) for z in zips]
            found = _index(archives, pngs)
            if not found:
                raise MissingFileError(
                    f"no Omniglot images under {str(root)!r}: expected zip archives or folders "
                    "laid out as <split>/<alphabet>/<character>/<id>.png"
                )
            _CACHE[cache_key] = _decode_all(found, image_size)
    return _CACHE[cache_key]


def _stamp(zips: list[Path], pngs: list[Path]) -> tuple:
    """What identifies the files' contents: paths, sizes (and archive mtimes)."""
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in zips)
    return stamp + tuple((str(p), p.stat().st_size) for p in pngs)


def _index(archives: list[zipfile.ZipFile],
           pngs: list[Path]) -> dict[tuple[str, str, str], tuple[Any, str]]:
    """``(alphabet, character, file) -> (archive or None, name)``, first source wins."""
    found: dict[tuple[str, str, str], tuple[Any, str]] = {}
    for archive in archives:
        for name in archive.namelist():
            key = _key(tuple(name.rstrip("/").split("/")))
            if key is not None:
                found.setdefault(key, (archive, name))
    for p in pngs:
        key = _key(p.parts)
        if key is not None:
            found.setdefault(key, (None, str(p)))
    return found


def _decode_all(found: dict[tuple[str, str, str], tuple[Any, str]],
                image_size: int) -> OmniglotImages:
    """Decode every indexed image, in (alphabet, character, file) order."""
    keys = sorted(found)
    characters = tuple(sorted({(k[0], k[1]) for k in keys}))
    index = {c: i for i, c in enumerate(characters)}
    images = np.empty((len(keys), image_size, image_size), dtype=np.float32)
    for i, key in enumerate(keys):
        archive, name = found[key]
        images[i] = _image(archive, name, image_size)
    return OmniglotImages(
        images=images,
        character=np.array([index[(k[0], k[1])] for k in keys], dtype=np.int64),
        characters=characters,
        alphabets=tuple(sorted({c[0] for c in characters})),
    )
