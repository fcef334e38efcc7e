"""apt's package lists under /var/lib/apt/lists, read offline: the English Translation files (each
package's synopsis and long description) and the Packages lists (Section, Source). apt stores them
compressed as it pleases (lz4, xz, gz or plain), so they are read with apt's own `apt-helper cat-file`;
without apt (tests elsewhere) Python decompresses them by their suffix. A damaged file is named with the
command that fetches it again. kdx.data.debian builds its corpora from what this module reads."""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from kdx.errors import KdxError

APT_LISTS = Path("/var/lib/apt/lists")
UPDATE_HINT = "apt-get -o Acquire::Languages=en update"
MAGIC = {".gz": b"\x1f\x8b", ".xz": b"\xfd7zXZ\x00", ".bz2": b"BZh", ".lz4": b"\x04\x22\x4d\x18", ".zst": b"\x28\xb5\x2f\xfd"}
REFETCH = f"the file is damaged: delete it and run `{UPDATE_HINT}` (as root) to fetch it again"
_COMPRESSED = r"(?:\.(?:lz4|xz|gz|bz2|lzma|zst))?"
TRANSLATION_RE = re.compile(r"_i18n_Translation-en" + _COMPRESSED + r"$")
PACKAGES_RE = re.compile(r"_Packages" + _COMPRESSED + r"$")

def apt_helper() -> str | None:
    """apt's own `apt-helper` (usually /usr/lib/apt/apt-helper, not on PATH), or None."""
    found = shutil.which("apt-helper")
    if found:
        return found
    for cand in ("/usr/lib/apt/apt-helper", "/usr/libexec/apt/apt-helper"):
        if os.access(cand, os.X_OK):
            return cand
    return None


def _python_decompress(path: Path) -> bytes:
    raw = path.read_bytes()
    suffix = path.suffix
    if suffix == ".gz":
        return gzip.decompress(raw)
    if suffix in (".xz", ".lzma"):  # the format named, not guessed: a zeroed .xz header must not pass as .lzma
        return lzma.decompress(raw, format=lzma.FORMAT_XZ if suffix == ".xz" else lzma.FORMAT_ALONE)
    if suffix == ".bz2":
        return bz2.decompress(raw)
    if suffix in (".lz4", ".zst"):
        if suffix == ".lz4":
            try:
                import lz4.frame

                return lz4.frame.decompress(raw)
            except ImportError:
                pass
        tool = "lz4" if suffix == ".lz4" else "zstd"
        if shutil.which(tool):
            return subprocess.run([tool, "-dc", str(path)], check=True, capture_output=True).stdout
        raise KdxError(f"debian: cannot decompress {path}: neither apt-helper, `{tool}` nor a Python "
                       f"{tool} module is available")
    return raw


def _gzip_size_matches(path: Path, size: int) -> bool:
    """A gzip file's last 4 bytes are its uncompressed size mod 2**32 (RFC 1952): a cut-off file fails this."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 18:  # header + trailer
            return False
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little") == size % 2**32


def read_list_file(path: Path | str, decompress: str = "auto") -> str:
    """The text of one file apt stored under /var/lib/apt/lists, whatever its compression.

    decompress: "apt-helper" (apt's `apt-helper cat-file`), "python" (by file suffix), or "auto"
    (apt-helper when installed, else Python)."""
    path = Path(path)
    if decompress not in ("auto", "apt-helper", "python"):
        raise KdxError(f"debian: decompress must be auto, apt-helper or python, not {decompress!r}")
    helper = apt_helper() if decompress != "python" else None
    if decompress == "apt-helper" and helper is None:
        raise KdxError("debian: apt-helper is not installed (it ships with apt); use decompress='python'")
    try:
        if path.suffix in (".gz", ".xz", ".bz2", ".lzma", ".lz4", ".zst") and path.stat().st_size == 0:
            raise KdxError(f"debian: {path} is empty, not a compressed list; {REFETCH}")
        magic = MAGIC.get(path.suffix)
        if magic:  # a damaged header can pass for another format's empty stream (apt-helper and lzma both guess)
            with open(path, "rb") as f:
                head = f.read(len(magic))
            if head != magic:
                raise KdxError(f"debian: cannot read {path}: it does not start like a {path.suffix} file ({head!r}); {REFETCH}")
        if helper is not None:
            done = subprocess.run([helper, "cat-file", str(path)], capture_output=True)
            if done.returncode != 0:
                err = " ".join(done.stderr.decode("utf-8", "replace").split())[:300]
                raise KdxError(f"debian: `apt-helper cat-file {path}` failed: {err}; {REFETCH}")
            data = done.stdout
            if path.suffix == ".gz" and not _gzip_size_matches(path, len(data)):  # apt-helper reads a cut-off .gz silently
                raise KdxError(f"debian: {path} is truncated (its gzip trailer does not match the {len(data)} bytes it "
                               f"decompresses to); {REFETCH}")
        else:
            data = _python_decompress(path)
    except (OSError, EOFError, RuntimeError, ValueError, zlib.error, lzma.LZMAError, subprocess.CalledProcessError) as e:
        detail = " ".join(str(e).split())[:300]  # a subprocess's message may hold its stderr's newlines
        raise KdxError(f"debian: cannot read {path} ({type(e).__name__}: {detail}); {REFETCH}") from None
    return data.decode("utf-8", "replace")


def iter_stanzas(text: str) -> Iterator[dict[str, str]]:
    """deb822 paragraphs: `Field: value` lines, continuation lines (leading space or tab) appended to
    the field after a newline with that first space removed; paragraphs split by blank lines."""
    stanza: dict[str, str] = {}
    field = None
    for line in text.split("\n"):
        if not line.strip():
            if stanza:
                yield stanza
            stanza, field = {}, None
        elif line[0] in " \t":
            if field is not None:
                stanza[field] += "\n" + line[1:]
        elif line.startswith("#"):
            continue
        else:
            key, sep, value = line.partition(":")
            if not sep:
                continue  # not a field; apt would reject the file, we skip the line
            field = key.strip()
            stanza[field] = value.strip()
    if stanza:
        yield stanza


def format_long_description(lines: Iterable[str]) -> str:
    """Policy 5.6.13's extended description as plain text: " ." separates paragraphs (a blank line
    here), lines with one leading space are wrapped prose (joined by spaces), lines with more are
    verbatim (kept on their own line, leading spaces dropped)."""
    paragraphs: list[str] = []
    current = ""
    for line in lines:  # each line has had its first leading space removed already
        if line.strip() == ".":
            if current:
                paragraphs.append(current)
            current = ""
        elif line.startswith((" ", "\t")):  # verbatim
            current = f"{current}\n{line.strip()}" if current else line.strip()
        else:
            current = f"{current} {line.strip()}" if current else line.strip()
    if current:
        paragraphs.append(current)
    return "\n\n".join(p for p in paragraphs if p.strip())


@dataclass(frozen=True)
class Description:
    package: str
    md5: str
    short: str
    long: str


@dataclass(frozen=True)
class PackageInfo:
    package: str
    section: str  # area prefix (contrib/, non-free/) stripped
    source: str  # version stripped; the package itself when the stanza has no Source
    md5: str  # Description-md5, "" when absent


def parse_translation(text: str) -> list[Description]:
    """The entries of an i18n Translation-en file (Package, Description-md5, Description-en)."""
    out = []
    for st in iter_stanzas(text):
        pkg, desc = st.get("Package"), st.get("Description-en")
        if not pkg or desc is None:
            continue
        short, _, rest = desc.partition("\n")
        out.append(Description(pkg, st.get("Description-md5", ""), short.strip(),
                               format_long_description(rest.split("\n")) if rest else ""))
    return out


def parse_packages(text: str) -> list[PackageInfo]:
    """The (Package, Section, Source, Description-md5) of a binary Packages list."""
    out = []
    for st in iter_stanzas(text):
        pkg = st.get("Package")
        if not pkg:
            continue
        section = st.get("Section", "").strip().rsplit("/", 1)[-1]
        source = st.get("Source", "").split("(", 1)[0].strip() or pkg
        out.append(PackageInfo(pkg, section, source, st.get("Description-md5", "")))
    return out


def find_list_files(lists_dir: Path) -> tuple[list[Path], list[Path]]:
    """(Translation-en files, Packages files) in apt's lists folder, each sorted by name."""
    lists_dir = Path(lists_dir)
    files = sorted(p for p in lists_dir.iterdir() if p.is_file()) if lists_dir.is_dir() else []
    translations = [p for p in files if TRANSLATION_RE.search(p.name)]
    packages = [p for p in files if PACKAGES_RE.search(p.name)]
    if not translations:
        raise KdxError(f"debian: no English Translation file (*_i18n_Translation-en*) in {lists_dir}; "
                       f"run `{UPDATE_HINT}` (as root) to fetch the package descriptions")
    if not packages:
        raise KdxError(f"debian: no Packages list (*_Packages*) in {lists_dir}; run `{UPDATE_HINT}` (as root)")
    return translations, packages
