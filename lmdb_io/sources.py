"""What a conversion reads: the class map and the sorted list of (relative path, label) to convert.

Classes are numbered exactly as ``torchvision.datasets.ImageFolder`` numbers them (sorted subfolder
names), and files are listed in ImageFolder's order (classes sorted, ``os.walk`` sorted, names
sorted), so labels and order agree with it. Unlike ImageFolder, every file is a candidate whatever its
extension: the converter tells images from other files by their bytes. Hidden files (``.DS_Store``,
``._x.jpg``) and hidden subfolders below a class are not candidates.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field

from .errors import ConvertError

_CSV_HEADERS = {"path", "file", "filename", "relpath", "image", "name"}


@dataclass(frozen=True)
class SourceList:
    root: str
    classes: list[str]
    items: list[tuple[str, int]]  # (path relative to root, with "/" separators; label)
    # directories not listed, as report entries {"path", "reason"}: unreadable, or reached a second time
    # through a symlink (a loop, or another class folder)
    skipped: list[dict] = field(default_factory=list)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    def fingerprint(self, options: dict) -> str:
        """A digest of everything that decides the database's content, checked on --resume."""
        h = hashlib.sha256()
        h.update(json.dumps({"classes": self.classes, "options": options}, sort_keys=True).encode())
        for rel, label in self.items:
            h.update(f"{label}\t{rel}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()


def _class_map(found: list[str], classes_from: list[str] | None, where: str) -> list[str]:
    if classes_from is None:
        return found
    known = set(classes_from)
    unknown = [c for c in found if c not in known]
    if unknown:
        raise ConvertError(
            f"{where}: class {unknown[0]!r} is not in the --classes-from database's class map"
            + (f" (nor {len(unknown) - 1} more)" if len(unknown) > 1 else "")
        )
    return list(classes_from)


def _check_root(root: str) -> None:
    if not os.path.exists(root):
        raise ConvertError(f"dataset directory {root} does not exist")
    if not os.path.isdir(root):
        raise ConvertError(f"dataset {root} is not a directory")


def _rel(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _list_dir(path: str) -> tuple[list[str], list[str]]:
    """(subfolders, files) of ``path``, sorted, hidden ones left out; symlinks are followed, as os.walk's
    ``followlinks=True`` does (a broken link is a file, which then fails to read and is reported)."""
    dirs: list[str] = []
    files: list[str] = []
    with os.scandir(path) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            (dirs if is_dir else files).append(entry.name)
    return sorted(dirs), sorted(files)


def _walk_class(root: str, class_dir: str, visited: dict[str, str], skipped: list[dict]) -> list[tuple[str, list[str]]]:
    """(directory, its files) for every directory under ``class_dir``, each real directory once.

    ``visited`` maps real paths already listed (or claimed by a class folder) to where they were met;
    a directory met again (a symlink loop like ``b/up -> ..``, or a link into another class folder,
    whose images would get the wrong label) is reported in ``skipped``, as is one that cannot be read.
    """
    found: list[tuple[str, list[str]]] = []
    stack = [class_dir]
    while stack:
        path = stack.pop()
        try:
            dirs, files = _list_dir(path)
        except OSError as exc:
            skipped.append({"path": _rel(path, root), "reason": f"cannot read directory: {exc.strerror}"})
            continue
        found.append((path, files))
        for name in reversed(dirs):  # popped in sorted order
            sub = os.path.join(path, name)
            real = os.path.realpath(sub)
            if real in visited:
                skipped.append(
                    {"path": _rel(sub, root), "reason": f"directory already visited (it is {visited[real]})"}
                )
                continue
            visited[real] = _rel(sub, root)
            stack.append(sub)
    return found


def scan_image_folder(root: str, classes_from: list[str] | None = None) -> SourceList:
    """List an ImageFolder tree ``root/<class>/**/<file>``."""
    _check_root(root)
    try:
        found = sorted(e.name for e in os.scandir(root) if e.is_dir())  # as ImageFolder.find_classes
    except OSError as exc:
        raise ConvertError(f"cannot read dataset directory {root}: {exc.strerror}") from None
    if not found:
        if not any(os.scandir(root)):
            raise ConvertError(f"dataset directory {root} is empty")
        raise ConvertError(f"dataset directory {root} has no class subfolders (expected {root}/<class>/<image>)")
    classes = _class_map(found, classes_from, root)
    class_to_idx = {name: i for i, name in enumerate(classes)}
    skipped: list[dict] = []
    visited = {os.path.realpath(root): "the dataset root"}
    walked: list[str] = []
    for name in found:  # class folders first: a link into one from another class is refused, not followed
        real = os.path.realpath(os.path.join(root, name))
        if real in visited:
            skipped.append({"path": name, "reason": f"directory already visited (it is {visited[real]})"})
            continue
        visited[real] = name
        walked.append(name)
    items: list[tuple[str, int]] = []
    for name in walked:
        # as ImageFolder: directories in order of their path, files sorted within each
        for dirpath, filenames in sorted(_walk_class(root, os.path.join(root, name), visited, skipped)):
            for fname in filenames:
                items.append((_rel(os.path.join(dirpath, fname), root), class_to_idx[name]))
    if not items:
        if skipped:
            raise ConvertError(
                f"dataset directory {root}: no file could be listed ({skipped[0]['path']}: {skipped[0]['reason']})"
            )
        raise ConvertError(f"dataset directory {root} has class folders but no files in them")
    return SourceList(root=root, classes=classes, items=items, skipped=skipped)


def _decode_list(csv_path: str, data: bytes) -> str:
    """The CSV's text: UTF-8, with or without a byte order mark (Excel writes one)."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConvertError(
            f"{csv_path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from None


def _list_rows(text: str) -> Iterator[tuple[int, list[str]]]:
    """(line number where the row starts, cells) for each row that is not blank or a ``#`` comment."""
    reader = csv.reader(io.StringIO(text, newline=""))
    last = 0
    for row in reader:
        lineno, last = last + 1, reader.line_num
        if not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        yield lineno, row


def read_file_list(root: str, csv_path: str, classes_from: list[str] | None = None) -> SourceList:
    """Read ``relative path,class name`` rows (ImageNet's flat val folder with its labels, say).

    A first row naming columns (``path,class``) is skipped, as are blank lines and ``#`` comments.
    Paths are normalised (``./a/../b.jpg`` is ``b.jpg``) and must stay inside ``root``; a path listed
    twice, a third column, an empty class name or text that is not UTF-8 is refused, naming the line.
    Items are ordered as ImageFolder would order them: by class, then by path.
    """
    _check_root(root)
    try:
        with open(csv_path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConvertError(f"cannot read --file-list {csv_path}: {exc.strerror}") from None
    pairs: list[tuple[str, str]] = []
    first_seen: dict[str, int] = {}
    for n, (lineno, row) in enumerate(_list_rows(_decode_list(csv_path, data))):
        if n == 0 and row[0].strip().lower() in _CSV_HEADERS and not os.path.exists(os.path.join(root, row[0])):
            continue  # a header row
        where = f"{csv_path}: row {lineno}"
        if len(row) < 2:
            raise ConvertError(f"{where} needs two columns (relative path, class name): {row!r}")
        if len(row) > 2:
            raise ConvertError(f"{where} has {len(row)} columns, expected two (relative path, class name): {row!r}")
        rel, class_name = row[0].strip().replace(os.sep, "/"), row[1].strip()
        if not rel:
            raise ConvertError(f"{where}: empty path")
        if not class_name:
            raise ConvertError(f"{where}: empty class name for {rel!r}")
        if os.path.isabs(rel):
            raise ConvertError(f"{where}: {rel!r} must be relative to {root}")
        norm = posixpath.normpath(rel)
        if norm in (".", "..") or norm.startswith("../"):
            raise ConvertError(f"{where}: {rel!r} is outside {root} (paths must stay inside --dataset)")
        if norm in first_seen:
            raise ConvertError(f"{where}: {rel!r} is listed twice (first on row {first_seen[norm]})")
        first_seen[norm] = lineno
        pairs.append((norm, class_name))
    if not pairs:
        raise ConvertError(f"--file-list {csv_path} lists no files")
    classes = _class_map(sorted({c for _, c in pairs}), classes_from, csv_path)
    class_to_idx = {name: i for i, name in enumerate(classes)}
    items = sorted(((rel, class_to_idx[c]) for rel, c in pairs), key=lambda it: (it[1], it[0]))
    return SourceList(root=root, classes=classes, items=items)
