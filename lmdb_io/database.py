"""Read access to a complete lmdb_io database: metadata, keys, labels and raw records.

This module imports no torch and no PIL, so DALI source workers load it cheaply.
"""

from __future__ import annotations

import json
import os
import threading
from typing import TYPE_CHECKING, Any

from . import pathtext, schema
from .env import data_file, shared_env
from .errors import CorruptRecordError, IncompleteDatabaseError, NotADatabaseError, convert_command
from .record import ImageFormat, decode_record
from .reencode import Reencode, from_meta

if TYPE_CHECKING:
    import lmdb


class ImageDatabase:
    """A complete database opened for reading through the process's shared Environment.

    Construction validates the database (refusing foreign and unfinished ones) and reads the small
    index entries; records are read on demand. Instances pickle as their path and re-read the index in
    the receiving process, so they can be handed to DataLoader or DALI workers under fork and spawn.
    """

    def __init__(self, path: str | os.PathLike, verify: bool = True) -> None:
        self.path = os.fspath(path)
        self.verify = verify
        self._load_index()

    # -- construction -------------------------------------------------------------------------------
    def _load_index(self) -> None:
        env = shared_env(self.path)
        with env.begin(buffers=False) as txn:
            meta_raw = txn.get(schema.META_KEY)
            if meta_raw is None:
                progress = txn.get(schema.PROGRESS_KEY)
                if progress is not None:
                    committed = json.loads(progress).get("stored", "?")
                    raise IncompleteDatabaseError(
                        f"{self.path}: incomplete database (its conversion stopped after {committed} images "
                        f"were committed); finish it with: {convert_command()} --dataset DIR -o {self.path} "
                        f"--resume"
                    )
                if txn.stat()["entries"] == 0:
                    raise NotADatabaseError(f"{self.path}: empty LMDB, not an image database")
                raise NotADatabaseError(f"{self.path}: an LMDB not written by lmdb_io (no __meta__ entry)")
            missing = [k.decode() for k in schema.FINAL_KEYS if txn.get(k) is None]
            if missing:
                raise IncompleteDatabaseError(
                    f"{self.path}: incomplete database (missing {', '.join(missing)}); rebuild it with "
                    f"{convert_command()} --overwrite"
                )
            keys_blob = txn.get(schema.KEYS_KEY)
            length_raw = txn.get(schema.LEN_KEY)
            targets_raw = txn.get(schema.TARGETS_KEY)
        # all three are in FINAL_KEYS, whose presence was checked above
        assert keys_blob is not None and length_raw is not None and targets_raw is not None
        try:
            meta = json.loads(meta_raw)
        except ValueError:
            raise NotADatabaseError(f"{self.path}: __meta__ is not JSON, not an lmdb_io database") from None
        if not isinstance(meta, dict) or meta.get("format") != schema.FORMAT_NAME:
            raise NotADatabaseError(f"{self.path}: __meta__ does not describe an {schema.FORMAT_NAME} database")
        version = meta.get("schema_version")
        if version != schema.SCHEMA_VERSION:
            raise NotADatabaseError(
                f"{self.path}: schema version {version}, this lmdb_io reads version {schema.SCHEMA_VERSION}"
            )
        _check_meta(self.path, meta)
        if not length_raw.isdigit():
            raise NotADatabaseError(f"{self.path}: __len__ is not a number ({length_raw[:20]!r})")
        length = int(length_raw)
        if length == 0:
            raise NotADatabaseError(f"{self.path}: the database holds no images")
        width = int(meta["key_width"])
        if len(keys_blob) != length * (width + 1) - 1:  # length >= 1: n keys, n - 1 newlines
            raise NotADatabaseError(f"{self.path}: __keys__ does not hold {length} keys of width {width}")
        import numpy as np  # here, not at module level: convert.py starts faster without it

        if len(targets_raw) % 8:
            raise NotADatabaseError(f"{self.path}: __targets__ holds {len(targets_raw)} bytes, not 8-byte labels")
        targets = np.frombuffer(targets_raw, dtype="<i8")
        if len(targets) != length:
            raise NotADatabaseError(f"{self.path}: __targets__ holds {len(targets)} labels, __len__ says {length}")
        classes = len(meta["classes"])  # a non-empty list (_check_meta)
        bad = np.flatnonzero((targets < 0) | (targets >= classes))
        if len(bad):  # -1 would crash mid-epoch, -100 (PyTorch's ignore index) silently train on nothing
            first = int(bad[0])
            start = first * (width + 1)
            key = keys_blob[start : start + width].decode(errors="replace")
            raise NotADatabaseError(
                f"{self.path}: __targets__[{first}] (record {key}) holds label {int(targets[first])}, outside "
                f"0..{classes - 1} for {classes} classes ({len(bad)} of {length} labels out of range)"
            )
        self.meta: dict[str, Any] = meta
        self.length = length
        self.key_width = width
        self._keys_blob: bytes = keys_blob
        self.targets = targets  # numpy int64 array, read-only
        self._paths: list[str] | None = None
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "verify": self.verify}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self.verify = state["verify"]
        self._load_index()

    # -- index ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.length

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def class_to_idx(self) -> dict[str, int]:
        return dict(self.meta["class_to_idx"])

    @property
    def reencode(self) -> Reencode:
        """The ``--max-size`` / ``--quality`` the images were stored under (both None: untouched bytes)."""
        return from_meta(self.meta)

    def key(self, index: int) -> bytes:
        """The LMDB key of image ``index`` (taken from ``__keys__``, not recomputed)."""
        if not 0 <= index < self.length:
            raise IndexError(f"{self.path}: index {index} out of range for {self.length} images")
        start = index * (self.key_width + 1)
        return self._keys_blob[start : start + self.key_width]

    def paths(self) -> list[str]:
        """Each image's source path relative to the dataset root (read once, on first use)."""
        if self._paths is None:
            with shared_env(self.path).begin() as txn:
                paths_raw = txn.get(schema.PATHS_KEY)
            assert paths_raw is not None  # in FINAL_KEYS, checked when the database was opened
            try:
                paths = pathtext.json_loads(paths_raw)  # non-UTF-8 names come back as os gave them
            except ValueError:
                raise NotADatabaseError(f"{self.path}: __paths__ is not JSON") from None
            if not isinstance(paths, list) or len(paths) != self.length:
                raise NotADatabaseError(f"{self.path}: __paths__ is not a list of {self.length} paths")
            self._paths = paths
        return self._paths

    # -- records -------------------------------------------------------------------------------------
    def read(self, index: int, verify: bool | None = None) -> tuple[memoryview, int]:
        """The fast path: (encoded image bytes, label) for image ``index``.

        The view points into the memory map itself, no copy: it is valid while this database object
        lives in this process and thread; decode or copy it before dropping the object.
        ``np.frombuffer(view, np.uint8)`` wraps it without a copy. The checksum is verified unless
        ``verify`` (default: the database's setting) is False; the label is always checked against
        ``__targets__`` (``CorruptRecordError`` naming the key when they differ).
        """
        payload, label, _ = self.read_record(index, verify)
        return payload, label

    def _txn(self) -> lmdb.Transaction[memoryview]:
        """This thread's long-lived read transaction (the database is read-only: one snapshot forever).

        Reusing it saves a transaction per read; it is reopened in a forked child with the Environment.
        """
        local = self._local
        pid = os.getpid()
        if getattr(local, "pid", None) != pid:
            local.txn = shared_env(self.path).begin(buffers=True)
            local.pid = pid
        return local.txn

    def read_record(self, index: int, verify: bool | None = None) -> tuple[memoryview, int, ImageFormat]:
        key = self.key(index)
        value = self._txn().get(key)
        if value is None:
            raise NotADatabaseError(f"{self.path}: record {key.decode()} listed in __keys__ is missing")
        payload, label, image_format = decode_record(value, key, self.verify if verify is None else verify)
        # the header's label is outside the checksum: it must agree with __targets__, whose range was
        # checked at open (one array lookup, so done with or without ``verify``)
        if label != self.targets[index]:
            raise CorruptRecordError(
                f"record {key.decode()!r}: label {label} in its header differs from __targets__ "
                f"({int(self.targets[index])}), the record header is corrupt"
            )
        return payload, label, image_format

    def file_bytes(self) -> int:
        return os.path.getsize(data_file(self.path))


_META_FIELDS = {"classes": list, "class_to_idx": dict, "key_width": int, "counts": dict}


def _check_meta(path: str, meta: dict[str, Any]) -> None:
    """The ``__meta__`` fields readers rely on are there, with the right types (one line if not)."""
    for name, kind in _META_FIELDS.items():
        if not isinstance(meta.get(name), kind):
            raise NotADatabaseError(f"{path}: __meta__ is malformed ({name!r} is missing or not a {kind.__name__})")
    if not all(isinstance(c, str) for c in meta["classes"]) or not meta["classes"]:
        raise NotADatabaseError(f"{path}: __meta__ is malformed ('classes' is not a list of class names)")


def open_database(path: str | os.PathLike, verify: bool = True) -> ImageDatabase:
    return ImageDatabase(path, verify=verify)
