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

import hashlib
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from kdx.data.apt_lists import (APT_LISTS, UPDATE_HINT, Description, PackageInfo, find_list_files, parse_packages,
                                parse_translation, read_list_file)
from kdx.errors import KdxError
from kdx.io import write_json, write_text

# The classes: Debian sections (area prefix stripped) kept, each its own class; the rest are dropped.
# The 12 largest once the module docstring's drops are made. Examples built from bookworm main amd64
# (+ -updates, -security), 2025-05: python 4417, perl 4204, utils 2230, haskell 2144, net 1934,
# golang 1890, devel 1865, javascript 1752, java 1644, science 1619, ruby 1450, admin 1421
# (next: gnu-r ~1290, games ~1100, x11 ~1000).
DEFAULT_SECTIONS: tuple[str, ...] = ("admin", "devel", "golang", "haskell", "java", "javascript", "net",
                                     "perl", "python", "ruby", "science", "utils")
MIN_CHARS = 30  # shorter stripped texts ("D interface", "client in Go") say too little to classify


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


def unlabeled_rows(rows: Iterable[dict], test_fraction: float, test_texts: Iterable[str] = (),
                   min_chars: int = MIN_CHARS) -> list[dict]:
    """collect_packages' rows -> the unlabeled pretraining corpus: the descriptions of every section (the
    dropped ones too: libs, doc, misc, ...), of sources outside the test split only, names stripped as for the
    labelled rows, at least min_chars, exact duplicates dropped, and never a text of the test split (one text
    can sit under two sources). Columns text, section, package, source; sorted by (source, package)."""
    out, seen = [], set(test_texts)
    for r in sorted(rows, key=lambda r: (r["source"], r["package"])):
        if is_test_source(r["source"], test_fraction):
            continue
        text = strip_names(r["long"], r["package"], r["source"])
        if len(text) < min_chars or text in seen:
            continue
        seen.add(text)
        out.append({"text": text, "section": r["section"], "package": r["package"], "source": r["source"]})
    return out


def build_debian_descriptions(out: Path | str, lists_dir: Path | str = APT_LISTS, test_fraction: float = 0.2,
                              sections: Mapping[str, str] | Sequence[str] = DEFAULT_SECTIONS,
                              min_chars: int = MIN_CHARS, decompress: str = "auto"):
    """Build the corpus from apt's lists folder and save it: `out` gets a DatasetDict (train, test;
    columns text, label (ClassLabel), short, package, source; and `unlabeled`, the masked-LM pretraining texts
    of unlabeled_rows: columns text, section, package, source) by save_to_disk, `class_counts.md` and
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
    unlabeled = unlabeled_rows(rows, test_fraction, (e["text"] for e in splits["test"]), min_chars)
    dsd["unlabeled"] = datasets.Dataset.from_dict({k: [e[k] for e in unlabeled] for k in ("text", "section", "package", "source")},
                                                  split="unlabeled")
    translations, packages = find_list_files(lists_dir)
    info = {"lists_dir": str(lists_dir), "test_fraction": test_fraction, "min_chars": min_chars,
            "sections": _class_map(sections), "packages_with_description": len(rows),
            "files": [{"name": p.name, "bytes": p.stat().st_size} for p in translations + packages],
            "counts": {s: dict(sorted(c.items())) for s, c in counts.items()}, "unlabeled": len(unlabeled)}
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

