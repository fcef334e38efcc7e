"""kdx.data.debian: apt's Translation/Packages lists -> the debian-descriptions corpus, on fixture lists
written in apt's own format and file names (no network, no real /var/lib/apt/lists)."""
import gzip
import importlib.util
import lzma
import shutil
import subprocess

import pytest

from kdx.data import debian
from kdx.data import apt_lists
from kdx.errors import KdxError

MAIN = "deb.debian.org_debian_dists_bookworm_main_"
SECURITY = "deb.debian.org_debian-security_dists_bookworm-security_main_"

TRANSLATION = """\
Package: python3-foo
Description-md5: aaaa0000aaaa0000aaaa0000aaaa0000
Description-en: Python 3 module for frobbing foo widgets
 Foo is a library that frobs widgets. The python3-foo package ships
 the Python3 bindings of FOO, not foobar.
 .
 Features:
   * frobs widgets
   * unfrobs them again
 .
 This package contains the module for Python 3.

Package: libfoo-perl
Description-md5: bbbb0000bbbb0000bbbb0000bbbb0000
Description-en: Perl module to parse foo configuration files
 Foo::Parser reads foo configuration files and returns a hash of their
 settings. It is written in pure Perl and has no dependencies.

Package: netthing
Description-md5: cccc0000cccc0000cccc0000cccc0000
Description-en: daemon that forwards network packets between interfaces
 netthing listens on a socket and forwards every packet it receives to the
 interfaces named in its configuration, keeping statistics per route.

Package: netthing-doc
Description-md5: dddd0000dddd0000dddd0000dddd0000
Description-en: documentation for netthing
 This package contains the HTML manual of netthing, a packet forwarder
 for routers.

Package: contribtool
Description-md5: eeee0000eeee0000eeee0000eeee0000
Description-en: downloader for a non-free network service
 contribtool fetches data over HTTP from a non-free service and caches it
 on the local network for every client on the LAN.

Package: python3-foo-dbg
Description-md5: ffff0000ffff0000ffff0000ffff0000
Description-en: too short
 Tiny.
"""

PACKAGES = """\
Package: python3-foo
Source: foo (1.2-3)
Version: 1.2-3+b1
Architecture: amd64
Description: Python 3 module for frobbing foo widgets
Description-md5: aaaa0000aaaa0000aaaa0000aaaa0000
Tag: devel::lang:python, implemented-in::python,
 role::shared-lib
Section: python
Priority: optional

Package: libfoo-perl
Version: 0.5-1
Architecture: all
Description: Perl module to parse foo configuration files
Description-md5: bbbb0000bbbb0000bbbb0000bbbb0000
Section: perl

Package: netthing
Version: 2.0-1
Architecture: amd64
Description-md5: cccc0000cccc0000cccc0000cccc0000
Section: net

Package: netthing-doc
Source: netthing
Version: 2.0-1
Architecture: all
Description-md5: dddd0000dddd0000dddd0000dddd0000
Section: doc

Package: contribtool
Source: contribtool-src (3.1)
Version: 3.1
Architecture: amd64
Description-md5: eeee0000eeee0000eeee0000eeee0000
Section: contrib/net

Package: python3-foo-dbg
Source: foo
Description-md5: ffff0000ffff0000ffff0000ffff0000
Section: python

Package: nodescription
Version: 1
Section: net
"""

COMPRESSORS = {
    "": lambda b: b,
    ".gz": lambda b: gzip.compress(b, mtime=0),
    ".xz": lzma.compress,
}


def _lz4(data: bytes) -> bytes:
    if importlib.util.find_spec("lz4") is not None:
        import lz4.frame

        return lz4.frame.compress(data)
    return subprocess.run(["lz4", "-c"], input=data, check=True, capture_output=True).stdout


HAVE_LZ4 = shutil.which("lz4") is not None or importlib.util.find_spec("lz4") is not None


def write_list(path, text: str, suffix: str = ""):
    data = text.encode()
    path = path.with_name(path.name + suffix)
    path.write_bytes(_lz4(data) if suffix == ".lz4" else COMPRESSORS[suffix](data))
    return path


@pytest.mark.parametrize("decompress", ["auto", "python"])
@pytest.mark.parametrize("suffix", ["", ".gz", ".xz", ".lz4"])
def test_translation_and_packages_parse_in_every_compression(tmp_path, suffix, decompress):
    if suffix == ".lz4" and not HAVE_LZ4:
        pytest.skip("neither the lz4 command nor the python lz4 module is available")
    tr = write_list(tmp_path / (MAIN + "i18n_Translation-en"), TRANSLATION, suffix)
    pk = write_list(tmp_path / (MAIN + "binary-amd64_Packages"), PACKAGES, suffix)
    assert apt_lists.read_list_file(tr, decompress) == TRANSLATION

    descs = {d.package: d for d in apt_lists.parse_translation(apt_lists.read_list_file(tr, decompress))}
    assert list(descs) == ["python3-foo", "libfoo-perl", "netthing", "netthing-doc", "contribtool", "python3-foo-dbg"]
    foo = descs["python3-foo"]
    assert foo.md5 == "aaaa0000aaaa0000aaaa0000aaaa0000"
    assert foo.short == "Python 3 module for frobbing foo widgets"
    assert foo.long == ("Foo is a library that frobs widgets. The python3-foo package ships the Python3 bindings "
                        "of FOO, not foobar.\n\nFeatures:\n* frobs widgets\n* unfrobs them again\n\n"
                        "This package contains the module for Python 3.")
    assert descs["python3-foo-dbg"].long == "Tiny."

    pkgs = {p.package: p for p in apt_lists.parse_packages(apt_lists.read_list_file(pk, decompress))}
    assert pkgs["python3-foo"] == apt_lists.PackageInfo("python3-foo", "python", "foo", "aaaa0000aaaa0000aaaa0000aaaa0000")
    assert pkgs["libfoo-perl"].source == "libfoo-perl"  # no Source: its own source
    assert (pkgs["contribtool"].section, pkgs["contribtool"].source) == ("net", "contribtool-src")
    assert pkgs["python3-foo-dbg"].source == "foo"
    assert pkgs["nodescription"].md5 == ""


@pytest.mark.skipif(apt_lists.apt_helper() is None, reason="apt-helper (from apt) is not installed")
def test_apt_helper_reads_what_python_reads(tmp_path):
    for suffix in ["", ".gz", ".xz"] + ([".lz4"] if HAVE_LZ4 else []):
        path = write_list(tmp_path / (MAIN + "i18n_Translation-en"), TRANSLATION, suffix)
        assert apt_lists.read_list_file(path, "apt-helper") == apt_lists.read_list_file(path, "python") == TRANSLATION
        path.unlink()


def test_without_apt_helper_python_decompresses_and_bad_files_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(apt_lists, "apt_helper", lambda: None)
    path = write_list(tmp_path / (MAIN + "i18n_Translation-en"), TRANSLATION, ".gz")
    assert apt_lists.read_list_file(path) == TRANSLATION  # auto falls back to Python
    with pytest.raises(KdxError, match="apt-helper is not installed"):
        apt_lists.read_list_file(path, "apt-helper")
    bad = tmp_path / (MAIN + "binary-amd64_Packages.xz")
    bad.write_bytes(b"not xz at all")
    with pytest.raises(KdxError, match="cannot read .*Packages.xz"):
        apt_lists.read_list_file(bad)


def test_stanzas_and_long_description_format():
    text = "A: 1\nB: two\n more\n .\n  verbatim\n\n\nA: 2\n# comment\n"
    assert list(apt_lists.iter_stanzas(text)) == [{"A": "1", "B": "two\nmore\n.\n verbatim"}, {"A": "2"}]
    assert apt_lists.format_long_description(["one", "two", ".", " a", " b", ".", "", "three"]) == \
        "one two\n\na\nb\n\nthree"


def test_strip_names_removes_names_and_their_parts_as_whole_words():
    text = "The python3-foo package ships the Python3 bindings of FOO (foo), not foobar or foo_bar."
    got = debian.strip_names(text, "python3-foo", "foo")
    assert got == "The package ships the bindings of, not foobar or foo_bar."
    assert "python3" not in got.lower() and " foo " not in got.lower()
    # the source name counts too; numeric parts stay; several parts in a row leave one space
    assert debian.strip_names("GTK 3 widgets for gtk3 apps by Acme Corp", "libgtk-3-0", "acme-corp") == \
        "GTK 3 widgets for gtk3 apps by"
    assert debian.strip_names("An R package: R interface to ggplot2 plots.", "r-cran-ggplot2", "r-cran-ggplot2") == \
        "An package: interface to plots."
    assert debian.name_tokens("libstdc++-12-dev") == ["libstdc++-12-dev", "libstdc", "dev"]
    assert debian.strip_names("Uses libstdc++-12-dev headers", "libstdc++-12-dev") == "Uses headers"
    assert debian.strip_names("nothing to strip here", "zzz") == "nothing to strip here"


def test_source_split_is_deterministic_and_keeps_sources_whole():
    names = [f"src{i}" for i in range(2000)]
    first = [debian.is_test_source(n, 0.2) for n in names]
    assert first == [debian.is_test_source(n, 0.2) for n in names]
    assert 0.17 < sum(first) / len(names) < 0.23
    assert all(debian.is_test_source(n, 0.5) for n, t in zip(names, first) if t)  # nested: 20% test within 50%
    rows = [{"package": f"p{i}-{j}", "source": f"src{i}", "section": "net", "short": "s",
             "long": f"a network tool number {i} variant {j} forwards packets"} for i in range(60) for j in range(3)]
    ex = debian.corpus_rows(rows)
    test_sources = {e["source"] for e in ex if debian.is_test_source(e["source"], 0.2)}
    train_sources = {e["source"] for e in ex if not debian.is_test_source(e["source"], 0.2)}
    assert test_sources and train_sources and not test_sources & train_sources


def test_unlabeled_rows_keep_every_section_of_train_sources_only():
    rows = [{"package": f"p{i}-{k}", "source": f"src{i}", "section": sec, "short": "s",
             "long": f"text number {i} in {word} words, long enough to keep"} for i in range(80)
            for k, (sec, word) in enumerate((("net", "alpha"), ("doc", "beta"), ("libs", "gamma")))]
    rows.append({"package": "dup", "source": "src0", "section": "misc", "short": "s", "long": rows[0]["long"]})
    unl = debian.unlabeled_rows(rows, 0.3)
    sources = {r["source"] for r in unl}
    assert sources == {f"src{i}" for i in range(80) if not debian.is_test_source(f"src{i}", 0.3)}
    assert {"net", "doc", "libs"} <= {r["section"] for r in unl}
    # src0's p0-0 and dup share a text: one of them is kept (dup, first in (source, package) order)
    assert len({r["text"] for r in unl}) == len(unl) == 3 * len(sources)
    # a text of the test split is never a pretraining text, even under a train source
    test_text = unl[0]["text"]
    assert test_text not in {r["text"] for r in debian.unlabeled_rows(rows, 0.3, [test_text])}


def _lists_dir(tmp_path, suffix=""):
    d = tmp_path / "lists"
    d.mkdir()
    write_list(d / (MAIN + "i18n_Translation-en"), TRANSLATION, suffix)
    write_list(d / (MAIN + "binary-amd64_Packages"), PACKAGES, suffix)
    # -security: a newer python3-foo with another description and a wrong section (the release's own
    # Packages list wins, and its Description-md5 picks the release's text), and one new package
    write_list(d / (SECURITY + "i18n_Translation-en"), """\
Package: python3-foo
Description-md5: 9999000099990000999900009999aaaa
Description-en: security rebuild
 A different text that must not be used for python3-foo at all.

Package: perlsec
Description-md5: 1111000011110000111100001111aaaa
Description-en: Perl tool only in the security suite
 A Perl script that audits configuration files for unsafe settings.
""", suffix)
    write_list(d / (SECURITY + "binary-amd64_Packages"), """\
Package: python3-foo
Source: foo (1.2-3+deb12u1)
Description-md5: 9999000099990000999900009999aaaa
Section: misc

Package: perlsec
Description-md5: 1111000011110000111100001111aaaa
Section: perl
""", suffix)
    (d / "lock").write_text("")
    (d / "partial").mkdir()
    (d / "deb.debian.org_debian_dists_bookworm_InRelease").write_text("not a list we read")
    return d


def test_build_on_fixture_lists_gives_the_expected_datasetdict_reproducibly(tmp_path):
    import datasets

    lists = _lists_dir(tmp_path)
    dsd = debian.build_debian_descriptions(tmp_path / "out", lists, test_fraction=0.5)
    assert set(dsd) == {"train", "test", "unlabeled"}
    # the pretraining texts: every section (the doc section too), no test source, no test text
    unl = dsd["unlabeled"]
    assert unl.num_rows and not any(debian.is_test_source(src, 0.5) for src in unl["source"])
    assert not set(unl["text"]) & set(dsd["test"]["text"])
    train_rows = [r for r in dsd["train"]]
    assert {r["text"] for r in train_rows} <= set(unl["text"])  # the labelled train texts are among them
    assert dsd["train"].features["label"].names == sorted(debian.DEFAULT_SECTIONS)
    rows = {r["package"]: r for s in ("train", "test") for r in dsd[s]}
    # doc section dropped, too-short text dropped, package without description dropped
    assert sorted(rows) == ["contribtool", "libfoo-perl", "netthing", "perlsec", "python3-foo"]
    names = dsd["train"].features["label"].names
    assert {p: names[r["label"]] for p, r in rows.items()} == {
        "contribtool": "net", "libfoo-perl": "perl", "netthing": "net", "perlsec": "perl", "python3-foo": "python"}
    foo = rows["python3-foo"]
    assert foo["source"] == "foo"
    assert foo["text"] == ("is a library that frobs widgets. The package ships the bindings of, not foobar.\n\n"
                           "Features:\n* frobs widgets\n* unfrobs them again\n\nThis package contains the module "
                           "for Python 3.")
    assert foo["short"] == "Python 3 module for frobbing widgets"
    assert rows["contribtool"]["text"].startswith("fetches data over HTTP")
    # "libfoo" and "perl" go; "foo" is not a part of libfoo-perl (no lib-prefix guessing) and stays
    assert rows["libfoo-perl"]["text"] == ("Foo::Parser reads foo configuration files and returns a hash of their "
                                           "settings. It is written in pure and has no dependencies.")
    for split in ("train", "test"):
        want = {r["source"] for r in rows.values() if debian.is_test_source(r["source"], 0.5) == (split == "test")}
        assert set(dsd[split]["source"]) == want
        assert dsd[split]["package"] == sorted(dsd[split]["package"])
    assert dsd["train"].num_rows and dsd["test"].num_rows

    counts = (tmp_path / "out" / "class_counts.md").read_text()
    assert "| class | train | test |" in counts
    for cls in names:
        n_train = sum(names[r["label"]] == cls for r in dsd["train"])
        n_test = sum(names[r["label"]] == cls for r in dsd["test"])
        assert f"| {cls} | {n_train} | {n_test} |" in counts
    assert datasets.load_from_disk(str(tmp_path / "out"))["test"].to_dict() == dsd["test"].to_dict()

    # the same lists, compressed another way, into a new folder and over the old build: same rows
    (tmp_path / "again").mkdir()
    lists2 = _lists_dir(tmp_path / "again", ".gz")
    again = debian.build_debian_descriptions(tmp_path / "out2", lists2, test_fraction=0.5, decompress="python")
    over = debian.build_debian_descriptions(tmp_path / "out", lists, test_fraction=0.5)
    for split in ("train", "test"):
        assert again[split].to_dict() == over[split].to_dict() == dsd[split].to_dict()
        assert again[split].features == dsd[split].features
    assert (tmp_path / "out2" / "class_counts.md").read_text() == counts

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(KdxError, match="not an earlier build"):
        debian.build_debian_descriptions(foreign, lists)
    assert (foreign / "keep.txt").exists()


def test_missing_lists_raise_the_named_error(tmp_path):
    with pytest.raises(KdxError, match=r"apt-get -o Acquire::Languages=en update"):
        debian.build_debian_descriptions(tmp_path / "out", tmp_path / "nowhere")
    empty = tmp_path / "lists"
    empty.mkdir()
    write_list(empty / (MAIN + "binary-amd64_Packages"), PACKAGES, ".gz")
    with pytest.raises(KdxError, match=r"Translation-en.*apt-get -o Acquire::Languages=en update"):
        debian.build_debian_descriptions(tmp_path / "out", empty)
    (empty / (MAIN + "binary-amd64_Packages.gz")).unlink()
    write_list(empty / (MAIN + "i18n_Translation-en"), TRANSLATION, ".gz")
    with pytest.raises(KdxError, match=r"Packages.*apt-get -o Acquire::Languages=en update"):
        debian.build_debian_descriptions(tmp_path / "out", empty)
    assert not (tmp_path / "out").exists()


def test_tfidf_anchor_scores_a_separable_corpus(tmp_path):
    import datasets

    from kdx.data import load_dataset
    from kdx.data.text import anchor_accuracy, tfidf_logreg

    words = {0: "packet socket route interface network", 1: "matrix solver equation physics simulation"}
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["net", "science"]),
                                  "short": datasets.Value("string")})

    def split(n, offset):
        rows = {"text": [], "label": [], "short": []}
        for i in range(n):
            y = i % 2
            rows["text"].append(f"{words[y]} item{i + offset} " + " ".join(words[y].split()[: 1 + i % 4]))
            rows["label"].append(y)
            rows["short"].append(words[y].split()[i % 5])
        return datasets.Dataset.from_dict(rows, features=features)

    datasets.DatasetDict(train=split(40, 0), test=split(20, 1000)).save_to_disk(str(tmp_path / "corpus"))
    data = load_dataset({"name": "debian_descriptions", "path": str(tmp_path / "corpus"), "vocab_size": 200})
    assert (len(data.texts["train"]), len(data.texts["test"])) == (40, 20) and data.classes == ["net", "science"]
    assert anchor_accuracy(data) == 1.0
    # the domain shift (test's one-line synopses), by the same fit
    preds, n_features = tfidf_logreg(data.texts["train"], data.y_train.numpy(), {"domain": data.texts["domain"]})
    assert (preds["domain"] == data.extra["domain"][1].numpy()).all() and n_features > 0
