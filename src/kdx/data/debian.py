"""debian-descriptions: an offline text-classification corpus, Debian package descriptions labelled by Section.

Every Debian machine can build it with no network beyond its own package mirror: `apt-get -o
Acquire::Languages=en update` stores, under /var/lib/apt/lists, the English Translation files (each
package's synopsis and long description) and the Packages lists (each package's Section and Source).
apt stores them compressed as it pleases (lz4, xz, gz or plain), so they are read with apt's own
`apt-helper cat-file`; without apt (tests elsewhere) Python decompresses them by their suffix.

Design, and why:

* Text. `text` is the long description only: its paragraphs (" ." lines) become blank lines, wrapped
  lines are joined, verbatim lines (two leading spaces: lists, examples) keep their own line. The
  one-line synopsis goes to its own column, `short`, never into `text`, so that a model trained on
  `text` and tested on `short` meets a real domain shift (one terse line instead of prose).
  `package` and `source` are kept as columns for analysis; models must not read them.
* Leakage. A package's name tells its Section (`python3-foo`, `libfoo-perl`, `golang-foo-dev`,
  `r-cran-foo`), and descriptions repeat the name. So, case-insensitively and as whole words (a word
  character may not touch either end; `-` and `.` do not count as word characters), `text` and `short`
  lose the package name, the source name, and every part of either split on `-._+` (`python3`, `perl`,
  `r`, `cran`, `rust`, `golang`, `dev`, ...). Purely numeric parts (`2`, `0` of `libgtk-3-0`) are kept:
  they say nothing of the section and "GTK 3" should stay. The prose may still name the language
  ("the Python 3 version", the JavaScript team's "Node.js is an event-based server-side JavaScript
  engine."): that is the text's own evidence, not the name's, and it is kept.
* Classes. Debian's Sections mix topics (net, science, games, sound) with packaging roles
  (libs/libdevel, doc, debug, localization, introspection) and catch-alls. Dropped are:
  - catch-alls and non-software: `misc`, `metapackages`, `tasks`, `oldlibs` (transitional dummies);
  - role sections, whose text is another package's description plus one boilerplate sentence: `doc`
    ("This package contains the documentation for ..." of a package in some other section), `debug`,
    `localization`, `introspection`, and `libs`/`libdevel` too: one upstream text, then "shared
    library" or "development files". As two classes they would teach a classifier to spot that one
    sentence; merged they would be a 10,000-package class of every topic at once (~30% of the
    corpus). Both are left out;
  - everything smaller than the 12 largest of the rest (counted after stripping and de-duplication).
  That leaves DEFAULT_SECTIONS, 12 classes of 1,400-4,400 distinct texts (about 290-850 test examples
  each, enough for per-class accuracy): seven language ecosystems (python, perl, haskell, golang,
  javascript, java, ruby), which stripping makes less trivial than their names, and five topical
  sections (utils, net, devel, science, admin), which overlap and make the task hard. The next ones
  down (gnu-r 1,289, games 1,102, x11 997) can be added with `sections=`; a mapping there also merges
  (e.g. {"libs": "libs", "libdevel": "libs"}).
* Duplicates. Within one source, packages often share their long description (foo, foo-data,
  foo-common; the Rust feature packages differ only in a name that stripping removes). Exact
  duplicates of an already-kept `text` are dropped (the first package in (source, package) order
  stays), also across sources, so no text is both in train and test. Texts under MIN_CHARS (30)
  characters after stripping ("D interface", "client in Go") are dropped too. `short` may end up
  empty (a synopsis that was only names, 0.5% of rows): filter those when using it.
* Split. By source package, so that binaries built from one source (which share text and wording)
  never sit on both sides: a source is in test when the first 8 bytes of sha256(source name), read as
  a fraction of 2**64, fall below `test_fraction`. No RNG, no dependence on what else is in the lists.
* Several suites. When a package appears in several Packages files (bookworm, -updates, -security,
  other architectures), its Section/Source come from the file that lists the most packages (the
  release itself; ties by file name); its description is the Translation entry with the same
  Description-md5, else any entry of that package name (first file in name order).

Rows are sorted by package name within each split; the ClassLabel names are in alphabetical order.
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from kdx.errors import KdxError
from kdx.io import write_json, write_text

APT_LISTS = Path("/var/lib/apt/lists")
UPDATE_HINT = "apt-get -o Acquire::Languages=en update"
MAGIC = {".gz": b"\x1f\x8b", ".xz": b"\xfd7zXZ\x00", ".bz2": b"BZh", ".lz4": b"\x04\x22\x4d\x18", ".zst": b"\x28\xb5\x2f\xfd"}
REFETCH = f"the file is damaged: delete it and run `{UPDATE_HINT}` (as root) to fetch it again"
_COMPRESSED = r"(?:\.(?:lz4|xz|gz|bz2|lzma|zst))?"
TRANSLATION_RE = re.compile(r"_i18n_Translation-en" + _COMPRESSED + r"$")
PACKAGES_RE = re.compile(r"_Packages" + _COMPRESSED + r"$")

# The classes: Debian sections (area prefix stripped) kept, each its own class; the rest are dropped.
# The 12 largest once the module docstring's drops are made. Examples built from bookworm main amd64
# (+ -updates, -security), 2025-05: python 4417, perl 4204, utils 2230, haskell 2144, net 1934,
# golang 1890, devel 1865, javascript 1752, java 1644, science 1619, ruby 1450, admin 1421
# (next: gnu-r ~1290, games ~1100, x11 ~1000).
DEFAULT_SECTIONS: tuple[str, ...] = ("admin", "devel", "golang", "haskell", "java", "javascript", "net",
                                     "perl", "python", "ruby", "science", "utils")
MIN_CHARS = 30  # shorter stripped texts ("D interface", "client in Go") say too little to classify


# ---------------------------------------------------------------------------------------------- reading


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


# ---------------------------------------------------------------------------------------------- cleaning


_WORD_SPLIT = re.compile(r"[-._+]+")


def name_tokens(*names: str) -> list[str]:
    """The whole names and their parts split on -._+, lower-case, purely numeric parts left out,
    longest first (so a whole name is removed before its parts)."""
    toks = set()
    for name in names:
        if not name:
            continue
        toks.add(name.lower())
        toks.update(p.lower() for p in _WORD_SPLIT.split(name) if p and not p.isdigit())
    return sorted(toks, key=lambda t: (-len(t), t))


def strip_names(text: str, *names: str) -> str:
    """`text` without the names (and their parts, see name_tokens) as case-insensitive whole words.
    Only the removals' surroundings are tidied: a parenthesis left empty goes, a removal before
    punctuation or at a line's end or start takes its spaces with it, one in mid-sentence leaves one
    space. The rest of the text is untouched."""
    if not text:
        return text
    low = text.lower()
    toks = [t for t in name_tokens(*names) if t in low]
    if not toks:
        return text
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, toks)) + r")(?!\w)", re.IGNORECASE)
    out = pattern.sub("\0", text)
    run = r"[ \t]*\0(?:[ \t]*\0)*[ \t]*"
    out = re.sub(r"[ \t]*\(" + run + r"\)", "", out)  # "(foo)" leaves nothing, not "()"
    out = re.sub(run + r"(?=[,.;:!?)\]]|$)", "", out, flags=re.MULTILINE)
    out = re.sub(r"(?:^|(?<=[(\[]))" + run, "", out, flags=re.MULTILINE)
    out = re.sub(run, " ", out)
    return out.strip()


def is_test_source(source: str, test_fraction: float) -> bool:
    """Deterministic split by source: sha256(name)'s first 8 bytes as a fraction of 2**64."""
    h = int.from_bytes(hashlib.sha256(source.encode("utf-8")).digest()[:8], "big")
    return h / 2.0**64 < test_fraction


# ---------------------------------------------------------------------------------------------- corpus


def collect_packages(lists_dir: Path = APT_LISTS, decompress: str = "auto") -> list[dict]:
    """Every package that has both a Packages entry and an English description: one dict per package
    (package, source, section, short, long), sorted by package name. Nothing filtered or stripped."""
    translations, packages = find_list_files(lists_dir)
    by_md5: dict[tuple[str, str], Description] = {}
    by_name: dict[str, Description] = {}
    for path in translations:
        for d in parse_translation(read_list_file(path, decompress)):
            by_md5.setdefault((d.package, d.md5), d)
            by_name.setdefault(d.package, d)
    parsed = [(p, parse_packages(read_list_file(p, decompress))) for p in packages]
    parsed.sort(key=lambda fp: (-len(fp[1]), fp[0].name))  # the release's own list first
    info: dict[str, PackageInfo] = {}
    for _, entries in parsed:
        for e in entries:
            info.setdefault(e.package, e)
    rows = []
    for name in sorted(info):
        e = info[name]
        d = by_md5.get((name, e.md5)) if e.md5 else None
        d = d or by_name.get(name)
        if d is None:
            continue
        rows.append({"package": name, "source": e.source, "section": e.section, "short": d.short, "long": d.long})
    return rows


def _class_map(sections: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    if isinstance(sections, Mapping):
        return {str(k): str(v) for k, v in sections.items()}
    return {str(s): str(s) for s in sections}


def corpus_rows(rows: Iterable[dict], sections: Mapping[str, str] | Sequence[str] = DEFAULT_SECTIONS,
                min_chars: int = MIN_CHARS) -> list[dict]:
    """collect_packages' rows -> labelled examples: kept sections only (mapped to class names), names
    stripped from `text` and `short`, `text` of at least min_chars, exact duplicate texts dropped (the
    first in (source, package) order stays). Sorted by (source, package)."""
    cmap = _class_map(sections)
    out, seen = [], set()
    for r in sorted(rows, key=lambda r: (r["source"], r["package"])):
        cls = cmap.get(r["section"])
        if cls is None:
            continue
        text = strip_names(r["long"], r["package"], r["source"])
        if len(text) < min_chars or text in seen:
            continue
        seen.add(text)
        out.append({"text": text, "label": cls, "short": strip_names(r["short"], r["package"], r["source"]),
                    "package": r["package"], "source": r["source"]})
    return out


def _class_table(names: list[str], counts: dict[str, Counter]) -> str:
    lines = ["| class | train | test |", "|---|---:|---:|"]
    for n in names:
        lines.append(f"| {n} | {counts['train'][n]} | {counts['test'][n]} |")
    lines.append(f"| **total** | {sum(counts['train'].values())} | {sum(counts['test'].values())} |")
    return "\n".join(lines) + "\n"


def build_debian_descriptions(out: Path | str, lists_dir: Path | str = APT_LISTS, test_fraction: float = 0.2,
                              sections: Mapping[str, str] | Sequence[str] = DEFAULT_SECTIONS,
                              min_chars: int = MIN_CHARS, decompress: str = "auto"):
    """Build the corpus from apt's lists folder and save it: `out` gets a DatasetDict (train, test;
    columns text, label (ClassLabel), short, package, source) by save_to_disk, `class_counts.md` and
    `build_info.json` (input files, parameters). Same input files -> the same rows in the same order.
    Returns the DatasetDict."""
    import datasets

    if not 0.0 < test_fraction < 1.0:
        raise KdxError(f"debian: test_fraction must be in (0, 1), not {test_fraction}")
    out, lists_dir = Path(out), Path(lists_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "dataset_dict.json").exists())):
        raise KdxError(f"debian: {out} exists and is not an earlier build (no dataset_dict.json); "
                       f"pass an empty or new folder")
    rows = collect_packages(lists_dir, decompress)
    examples = corpus_rows(rows, sections, min_chars)
    if not examples:
        raise KdxError(f"debian: no package in {lists_dir} has a description and one of the sections "
                       f"{sorted(_class_map(sections))}; run `{UPDATE_HINT}` (as root) to fetch intact lists, or "
                       "pass other sections")
    names = sorted(set(_class_map(sections).values()))
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names),
                                  "short": datasets.Value("string"), "package": datasets.Value("string"),
                                  "source": datasets.Value("string")})
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for ex in examples:
        splits["test" if is_test_source(ex["source"], test_fraction) else "train"].append(ex)
    dsd = datasets.DatasetDict()
    counts: dict[str, Counter] = {}
    for split, exs in splits.items():
        exs.sort(key=lambda e: e["package"])
        counts[split] = Counter(e["label"] for e in exs)
        cols = {k: [e[k] for e in exs] for k in features}
        cols["label"] = [names.index(lbl) for lbl in cols["label"]]
        dsd[split] = datasets.Dataset.from_dict(cols, features=features, split=split)
    translations, packages = find_list_files(lists_dir)
    info = {"lists_dir": str(lists_dir), "test_fraction": test_fraction, "min_chars": min_chars,
            "sections": _class_map(sections), "packages_with_description": len(rows),
            "files": [{"name": p.name, "bytes": p.stat().st_size} for p in translations + packages],
            "counts": {s: dict(sorted(c.items())) for s, c in counts.items()}}
    # built beside `out`, then renamed over it: a failure or a kill leaves the earlier build or nothing
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        dsd.save_to_disk(str(tmp))
        write_text(tmp / "class_counts.md",
                   f"# debian-descriptions: packages per class\n\n{len(rows)} packages with a description; "
                   f"{sum(len(v) for v in splits.values())} examples in {len(names)} classes, split by source "
                   f"(test_fraction={test_fraction}).\n\n" + _class_table(names, counts))
        write_json(tmp / "build_info.json", info)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dsd

