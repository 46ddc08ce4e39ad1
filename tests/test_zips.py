"""The streaming ZIP writer: valid for zipfile, unzip and Java's ZipInputStream; ZIP64; bounded
memory; precomputed CRCs used as given."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tracemalloc
import zipfile
import zlib

import pytest

from conftest import SAMPLES
from imaging_commons.core import zips
from imaging_commons.core.zips import Member, iter_zip

FILES = [SAMPLES / "CT_small.dcm", SAMPLES / "MR_small.dcm", SAMPLES / "examples_rgb_color.dcm"]


def crc_of(path) -> int:
    return zlib.crc32(path.read_bytes())


def members() -> list[Member]:
    return ([Member("LICENSE", b"CC BY 4.0\n")]
            + [Member(f"series/{f.name}", f, crc_of(f)) for f in FILES[:2]]
            + [Member(f"series/{FILES[2].name}", FILES[2])])  # CRC left to the writer


def write(tmp_path, items, **kw):
    out = tmp_path / "out.zip"
    out.write_bytes(b"".join(iter_zip(items, **kw)))
    return out


def test_round_trip_in_order_with_crcs_in_the_local_headers(tmp_path):
    chunks = list(iter_zip(members(), chunk_size=4096))
    assert min(map(len, chunks[:-1])) >= 4096 and max(map(len, chunks)) < 2 * 4096 + 1024
    out = tmp_path / "out.zip"
    out.write_bytes(b"".join(chunks))
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == [m.name for m in members()]
        assert zf.testzip() is None
        for f in FILES:
            assert hashlib.md5(zf.read(f"series/{f.name}")).hexdigest() == \
                hashlib.md5(f.read_bytes()).hexdigest()
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            assert not info.flag_bits & 0x08  # no data descriptors: sizes and CRC up front
    if shutil.which("unzip"):
        assert subprocess.run(["unzip", "-tq", str(out)], capture_output=True).returncode == 0


def test_a_wrong_precomputed_crc_is_what_the_archive_says(tmp_path):
    """The writer trusts the catalogue's CRC (that is the point); a reader then detects a file
    that changed behind the catalogue's back."""
    out = write(tmp_path, [Member("ct.dcm", FILES[0], crc_of(FILES[0]) ^ 1)])
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() == "ct.dcm"


def test_zip64_when_sizes_or_offsets_pass_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(zips, "ZIP64_LIMIT", 1000)
    data = bytes(range(256)) * 20
    out = write(tmp_path, [Member("ct.dcm", FILES[0], crc_of(FILES[0])), Member("blob.bin", data)])
    with zipfile.ZipFile(out) as zf:
        assert zf.read("blob.bin") == data and zf.testzip() is None
        assert hashlib.md5(zf.read("ct.dcm")).hexdigest() == hashlib.md5(FILES[0].read_bytes()).hexdigest()
    if shutil.which("unzip"):
        assert subprocess.run(["unzip", "-tq", str(out)], capture_output=True).returncode == 0


def test_memory_stays_bounded_for_a_large_member(tmp_path):
    big, block, blocks = tmp_path / "big.bin", bytes(range(256)) * 4096, 300  # 300 MB
    with open(big, "wb") as f:
        for _ in range(blocks):
            f.write(block)
    tracemalloc.start()
    try:
        total = sum(len(c) for c in iter_zip([Member("big.bin", big, 0)]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(block) * blocks < total < len(block) * blocks + 1024
    assert peak < 8 * 1024 * 1024


JAVA_READER = """
import java.io.*; import java.util.zip.*; import java.security.MessageDigest;
public class ReadZip { public static void main(String[] a) throws Exception {
  try (ZipInputStream z = new ZipInputStream(new FileInputStream(a[0]))) {
    ZipEntry e; byte[] buf = new byte[65536];
    while ((e = z.getNextEntry()) != null) {
      MessageDigest md = MessageDigest.getInstance("MD5"); int n;
      while ((n = z.read(buf)) > 0) md.update(buf, 0, n);
      StringBuilder hex = new StringBuilder();
      for (byte b : md.digest()) hex.append(String.format("%02x", b));
      System.out.println(e.getName() + " " + hex);
    } } } }
"""


@pytest.mark.skipif(not shutil.which("javac"), reason="no Java compiler on this machine")
def test_java_zip_input_stream_reads_it(tmp_path):
    """NBIA's download tools are Java: ZipInputStream refuses stored members with data
    descriptors, which is what the standard library writes when streaming."""
    (tmp_path / "ReadZip.java").write_text(JAVA_READER)
    subprocess.run(["javac", "ReadZip.java"], cwd=tmp_path, check=True, capture_output=True)
    out = write(tmp_path, members())
    listing = subprocess.run(["java", "-cp", str(tmp_path), "ReadZip", str(out)],
                             capture_output=True, text=True, check=True).stdout.split("\n")
    expected = [f"{m.name} {hashlib.md5(m.source if isinstance(m.source, bytes) else m.source.read_bytes()).hexdigest()}"
                for m in members()]
    assert listing[:-1] == expected
