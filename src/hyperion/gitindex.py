"""A worktree's index file, read as git writes it, for one question: which tree would
``git write-tree`` write from it?

After ``git apply --index`` the commit's tree is what the index holds. Asking git for it
costs a process (about 3 ms on a small machine, on the path every request waits on), though
the answer is a few tree objects: git keeps, in the index's ``TREE`` extension (the
cache-tree), the tree id of every folder nothing was staged in since it was last written,
and marks the folders the apply staged in as invalid. This module reads the entries and that
extension; gitinproc.tree_of_index rebuilds the invalid folders from the entries, as git's
``cache_tree_update`` does, and writes their tree objects.

Only the plain case is read: index version 2 with SHA-1 ids, every entry at stage 0 with a
regular file, symlink or gitlink mode, no extension git requires to understand the index (a
split index, a sparse index), and a trailing checksum that matches. Anything else is None,
and the caller asks git.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from typing import Any

#: An index with more entries than this is left to git: walking every entry in Python
#: would cost more than git's process (the walk is linear in the entries).
MAX_ENTRIES = 2000

_HEADER = b"DIRC"
_ID_SIZE = 20
#: An entry's fixed part: stat data (the mode 24 bytes in, 40 in all), the id, the flags.
_ENTRY = struct.Struct(">24xI12x20sH")
_NAME_LENGTH = 0x0FFF
_STAGE = 0x3000
_EXTENDED = 0x4000
_MODES = frozenset({0o100644, 0o100755, 0o120000, 0o160000})
#: A cache-tree node's header: name, NUL, entry count (-1: invalid), space, subtrees, LF.
_NODE = re.compile(rb"([^\0/]*)\0(-1|\d{1,9}) (\d{1,9})\n")


@dataclass(frozen=True)
class IndexTree:
    """What the index says about the tree to write: ``files`` per folder (b"" the root) as
    (name, mode, raw id), in index order; ``cached`` the raw tree id of each folder whose
    cache-tree entry is valid; ``folders`` every folder that holds an entry, at any depth."""

    files: dict[bytes, list[tuple[bytes, int, bytes]]]
    cached: dict[bytes, bytes]
    folders: set[bytes]


def small_index(header: bytes) -> bool:
    """Whether an index file's first 12 bytes are those of one :func:`read_index` may read:
    version 2, at most :data:`MAX_ENTRIES` entries."""
    return (len(header) == 12 and header[:4] == _HEADER
            and int.from_bytes(header[4:8], "big") == 2
            and int.from_bytes(header[8:12], "big") <= MAX_ENTRIES)


def read_index(data: bytes) -> IndexTree | None:
    """The entries and valid cache-tree ids of an index file's bytes; None when it is not
    the plain case this module reads (see the module's docstring)."""
    size = len(data)
    if size < 12 + _ID_SIZE or not small_index(data[:12]) or \
            hashlib.sha1(data[:-_ID_SIZE]).digest() != data[-_ID_SIZE:]:
        return None
    count = int.from_bytes(data[8:12], "big")
    end = size - _ID_SIZE
    files: dict[bytes, list[tuple[bytes, int, bytes]]] = {}
    folders: set[bytes] = {b""}
    unpack = _ENTRY.unpack_from
    offset = 12
    last = b""
    try:
        for _ in range(count):
            mode, oid, flags = unpack(data, offset)
            length = flags & _NAME_LENGTH
            if flags & (_STAGE | _EXTENDED) or length == _NAME_LENGTH or mode not in _MODES:
                return None     # unmerged (write-tree refuses), version 3, a long name
            name_at = offset + _ENTRY.size
            path = data[name_at:name_at + length]
            # Each entry is padded with 1 to 8 NULs to a multiple of 8 bytes.
            offset += (_ENTRY.size + length + 8) & ~7
            if path <= last or offset > end or path[:1] == b"/":
                return None     # out of git's order (or a duplicate), cut short, absolute
            last = path
            folder, _, name = path.rpartition(b"/")
            bucket = files.get(folder)
            if bucket is None:
                bucket = files[folder] = []
                _add_folders(folders, folder)
            bucket.append((name, mode, oid))
    except struct.error:
        return None
    cached = _extensions(data, offset, end)
    if cached is None:
        return None
    return IndexTree(files, cached, folders)


def _add_folders(folders: set[bytes], folder: bytes) -> None:
    while folder not in folders:
        folders.add(folder)
        folder = folder.rpartition(b"/")[0]


def _extensions(data: bytes, offset: int, end: int) -> dict[bytes, bytes] | None:
    """The valid cache-tree ids from the extensions after the entries; None when one of them
    must be understood to read the index (its signature starts with a lowercase letter:
    ``link``, ``sdir``) or they do not add up."""
    cached: dict[bytes, bytes] = {}
    while offset < end:
        if offset + 8 > end:
            return None
        signature = data[offset:offset + 4]
        length = int.from_bytes(data[offset + 4:offset + 8], "big")
        start, offset = offset + 8, offset + 8 + length
        if offset > end or not b"A" <= signature[:1] <= b"Z":
            return None
        if signature == b"TREE" and not _cache_tree(data[start:offset], cached):
            return None
    return cached


def _cache_tree(ext: bytes, cached: dict[bytes, bytes]) -> bool:
    """Read the ``TREE`` extension into ``cached`` (folder -> raw tree id, valid entries
    only). Each node: its name (the root's is empty), NUL, its entry count (-1: invalid),
    a space, its subtree count, LF, the id when valid, then its subtrees, depth first."""
    stack: list[list[Any]] = []      # [folder, subtrees still to read]
    match = _NODE.match
    offset = 0
    while offset < len(ext):
        node = match(ext, offset)
        if node is None:
            return False
        name, entries, subtrees = node.group(1), int(node.group(2)), int(node.group(3))
        offset = node.end()
        while stack and stack[-1][1] == 0:
            stack.pop()
        if stack:
            parent = stack[-1]
            parent[1] -= 1
            if not name:
                return False
            folder = parent[0] + b"/" + name if parent[0] else name
        elif node.start() == 0 and not name:
            folder = b""        # the root comes first, and only once
        else:
            return False
        if entries >= 0:
            if offset + _ID_SIZE > len(ext):
                return False
            cached[folder] = ext[offset:offset + _ID_SIZE]
            offset += _ID_SIZE
        stack.append([folder, subtrees])
    return all(left == 0 for _, left in stack)
