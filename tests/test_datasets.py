"""Dataset plugins on generated fixture trees, the real set, and the bad-input corpus, through the CLI."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xaicxr import plugins
from xaicxr.cli import app
from xaicxr.stages.dataset import take_inventory
from xaicxr.io.loader import iter_batches
from xaicxr.errors import DataError

from badinput import build_bad_corpus, write_dicom
from conftest import CXR3

runner = CliRunner()


def _png(path: Path, value: int = 128, size: tuple[int, int] = (40, 30), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("L", size, value)
    (img.convert(mode) if mode != "L" else img).save(path)
    return path


def _inspect(*args: str) -> dict:
    result = runner.invoke(app, ["data", "inspect", *args, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_folder_layout_nested_any_format(tmp_path):
    root = tmp_path / "set"
    _png(root / "healthy" / "a.png")
    _png(root / "healthy" / "deep" / "er" / "b.jpg", mode="RGB")
    _png(root / "sick" / "p7_c.bmp")
    _png(root / "sick" / "p7_d.tiff", mode="RGBA")
    write_dicom(root / "sick" / "p9_e.dcm", np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 4)
    _png(root / "stray.png")
    report = _inspect("--dataset", "folder", str(root), "-o", r"patient_pattern='^(p\d+)_'")
    assert report["counts"] == {"healthy": 2, "sick": 3}
    assert report["patients"] == {"healthy": 0, "sick": 2}
    assert report["formats"] == {"BMP": 1, "DICOM": 1, "JPEG": 1, "PNG": 1, "TIFF": 1}
    assert report["sizes"]["width"]["max"] == 64
    assert [s["reason"] for s in report["skipped"]] == ["not inside a class folder"]


def test_folder_patient_patterns_first_match_wins(tmp_path):
    root = tmp_path / "set"
    for name in ("p1_a.png", "p1_b.png", "paper7-fig1.png", "paper7-fig2.png", "loose.png"):
        _png(root / "x" / name)
    folder = plugins.get("dataset", "folder")
    dataset = folder(path=str(root), patient_pattern=[r"^(p\d+)_", r"^(paper\d+)-", r"^()loose"])
    expected = {"p1_a.png": "p1", "p1_b.png": "p1", "paper7-fig1.png": "paper7",
                "paper7-fig2.png": "paper7", "loose.png": None}
    assert {r.path.name: r.patient for r in dataset.scan().records} == expected
    assert {r.path.name: r.patient for r in dataset.external(str(root)).scan().records} == expected
    with pytest.raises(DataError, match="empty patient_pattern"):
        folder(path=str(root), patient_pattern=[r"^(p\d+)_", ""])


def test_folder_errors_are_clear(tmp_path):
    result = runner.invoke(app, ["data", "inspect", "--dataset", "folder", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "is not a folder" in result.stderr
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["data", "inspect", "--dataset", "folder", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no class folders" in result.stderr
    result = runner.invoke(app, ["data", "inspect", "--dataset", "folder", str(tmp_path), "-o", "colour=1"])
    assert result.exit_code == 2 and "unknown key 'colour'" in result.stderr


def test_bad_input_corpus_is_fully_reported(tmp_path):
    expected = build_bad_corpus(tmp_path / "bad")
    report = _inspect("--dataset", "folder", str(tmp_path / "bad"))
    reasons = {Path(s["path"]).relative_to(tmp_path / "bad").as_posix().rstrip("/"): s["reason"]
               for s in report["skipped"]}
    for rel, keyword in expected.items():
        if keyword:
            hit = [r for p, r in reasons.items() if p == rel or rel.startswith(p + "/")]
            assert hit, f"{rel} was not reported"
            assert keyword.lower() in hit[0].lower(), (rel, hit[0])
        else:
            assert rel not in reasons, f"valid file {rel} was skipped: {reasons.get(rel)}"
    loaded = sum(report["counts"].values())
    assert loaded == sum(1 for k in expected.values() if not k)


def _cxr4_tree(root: Path) -> None:
    for offset, subset in ((0, "train"), (100, "test")):
        for p in range(offset + 1, offset + 4):
            _png(root / subset / "NORMAL" / f"IM-{p:04d}-0001.jpeg", 60)
            _png(root / subset / "PNEUMONIA" / f"person{p}_bacteria_{p}.jpeg", 90)
            _png(root / subset / "PNEUMONIA" / f"person{p}_bacteria_{p + 10}.jpeg", 91)
            _png(root / subset / "PNEUMONIA" / f"person{p + 50}_virus_{p}.jpeg", 100)
    _png(root / "train" / "PNEUMONIA" / "mystery.jpeg")


def test_cxr4_pediatric_plus_covid_csv(tmp_path):
    _cxr4_tree(tmp_path / "kermany")
    covid = tmp_path / "covid"
    for i, view in enumerate(["PA", "AP", "L", "AP Supine"]):
        _png(covid / "images" / f"c{i}.png", 150)
    with (covid / "metadata.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patientid", "finding", "view", "filename"])
        w.writerow(["1", "Pneumonia/Viral/COVID-19", "PA", "c0.png"])
        w.writerow(["1", "COVID-19", "AP", "c1.png"])
        w.writerow(["2", "COVID-19", "L", "c2.png"])
        w.writerow(["3", "COVID-19", "AP Supine", "c3.png"])
        w.writerow(["4", "COVID-19", "PA", "missing.png"])
        w.writerow(["5", "Pneumonia/Bacterial/Streptococcus", "PA", "c0.png"])
    cls = plugins.get("dataset", "cxr4")
    scan = cls(path=str(tmp_path / "kermany"), covid_metadata=str(covid / "metadata.csv")).scan()
    assert scan.classes == ["normal", "bacteria", "virus", "covid"]
    inv = take_inventory(scan)
    summary = inv.summary()
    assert summary["counts"] == {"normal": 6, "bacteria": 12, "virus": 6, "covid": 3}
    assert summary["patients"] == {"normal": 6, "bacteria": 6, "virus": 6, "covid": 2}
    reasons = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert "neither 'bacteria' nor 'virus'" in reasons["mystery.jpeg"]
    assert "not frontal" in reasons["c2.png"]
    assert "missing" in reasons["missing.png"]
    subsets = {r.subset for r in inv.records if r.label != "covid"}
    assert subsets == {"train", "test"}


def test_cxr4_covid_folder_and_flat_layout(tmp_path):
    _png(tmp_path / "k" / "NORMAL" / "IM-0001-0001.jpeg")
    _png(tmp_path / "k" / "PNEUMONIA" / "person1_virus_1.jpeg")
    _png(tmp_path / "c" / "x.png")
    report = _inspect("--dataset", "cxr4", str(tmp_path / "k"), "-o", f'covid_path="{tmp_path / "c"}"')
    assert report["counts"] == {"normal": 1, "bacteria": 0, "virus": 1, "covid": 1}
    with pytest.raises(DataError, match="no NORMAL/ or PNEUMONIA/"):
        plugins.get("dataset", "cxr4")(path=str(tmp_path / "c")).scan()


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_phantom_set_on_disk_is_deterministic_with_masks(tmp_path):
    args = ["--n-per-class", "3", "--size", "48", "--seed", "7", "--json"]
    for out in ("a", "b"):
        result = runner.invoke(app, ["data", "phantom", str(tmp_path / out), *args])
        assert result.exit_code == 0, result.stderr
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    other = runner.invoke(app, ["data", "phantom", str(tmp_path / "c"), "--n-per-class", "3",
                                "--size", "48", "--seed", "8"])
    assert other.exit_code == 0
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")
    for sub in ("images", "masks/lesion", "masks/lung"):
        assert len(list((tmp_path / "a" / sub / "covid").glob("*.png"))) == 3
    report = _inspect("--dataset", "phantom", str(tmp_path / "a"))
    assert report["counts"] == {"normal": 3, "bacteria": 3, "virus": 3, "covid": 3}
    assert report["masks"] == {"lesion": 12, "lung": 12, "boxes": 0}
    assert report["skipped"] == []
    scan = plugins.get("dataset", "phantom")(path=str(tmp_path / "a")).scan()
    batch = next(iter_batches(scan.records, scan.classes, size=32, batch_size=12))
    assert batch.images.shape == (12, 32, 32) and batch.images.dtype == np.float32
    assert batch.lesion.shape == (12, 32, 32) and batch.lung.dtype == bool
    normal = batch.labels == 0
    assert not batch.lesion[normal].any() and batch.lesion[~normal].any(axis=(1, 2)).all()


def test_batches_skip_files_that_break_after_scanning(tmp_path):
    root = tmp_path / "set"
    for i in range(5):
        _png(root / "a" / f"{i}.png", 10 * i)
    scan = plugins.get("dataset", "folder")(path=str(root)).scan()
    (root / "a" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    skipped = []
    batches = list(iter_batches(scan.records, scan.classes, size=16, batch_size=2, on_skip=skipped.append))
    assert [len(b.ids) for b in batches] == [2, 2]
    assert [Path(s.path).name for s in skipped] == ["3.png"]


@pytest.mark.skipif(not CXR3.is_dir(), reason=f"real data set absent: {CXR3} (see shared/data/README.md)")
def test_real_cxr3_every_file_accounted_for():
    report = _inspect("--dataset", "folder", str(CXR3))
    manifest = json.loads((CXR3 / "manifest.json").read_text())
    assert sum(report["counts"].values()) + len(report["skipped"]) >= len(manifest)
    assert report["counts"] == {"COVID-19": 124, "No_findings": 500, "Pneumonia": 500}
    assert [s["reason"] for s in report["skipped"]] == ["not inside a class folder"]  # manifest.json
    assert set(report["modes"]) >= {"L", "RGB"}


def _kermany3_tree(root: Path) -> None:
    """The kermany3-real layout: one folder per class, patients in the names (some with
    several images, one child with both a bacterial and a viral film)."""
    for p in range(1, 9):
        _png(root / "normal" / f"IM-{p:04d}-0001.jpeg", 60)
        _png(root / "normal" / f"NORMAL2-IM-{p:04d}-0001.jpeg", 61)
        _png(root / "bacteria" / f"person{p}_bacteria_{p}.jpeg", 90)
        _png(root / "bacteria" / f"person{p}_bacteria_{p + 20}.jpeg", 91)
        _png(root / "virus" / f"person{p + 50}_virus_{p}.jpeg", 100)
    _png(root / "virus" / "person1_virus_99.jpeg", 101)
    _png(root / "virus" / "person2_bacteria_98.jpeg", 102)


def test_cxr4_kermany3_layout_with_covid_folder_keeps_patients_together(tmp_path):
    from xaicxr.stages.split import split_records

    _kermany3_tree(tmp_path / "k")
    for i in range(6):
        _png(tmp_path / "c" / f"radiol.2020{i % 3}.fig{i}.png", 150)
    cls = plugins.get("dataset", "cxr4")
    scan = cls(path=str(tmp_path / "k"), covid_path=str(tmp_path / "c"),
               covid_patient_pattern=r"^(radiol\.\d+)\.").scan()
    labels = {r.id: r.label for r in scan.records}
    assert labels["normal/NORMAL2-IM-0003-0001.jpeg"] == "normal"
    assert labels["virus/person1_virus_99.jpeg"] == "virus"
    assert labels["covid/radiol.20201.fig4.png"] == "covid"
    reasons = {Path(s.path).name: s.reason for s in scan.skipped}
    assert reasons == {"person2_bacteria_98.jpeg": "file name says 'bacteria' but the folder is virus/"}
    patients = {r.id: r.patient for r in scan.records}
    assert patients["bacteria/person1_bacteria_21.jpeg"] == patients["virus/person1_virus_99.jpeg"] == "person1"
    assert patients["normal/NORMAL2-IM-0003-0001.jpeg"] == "normal2-im-0003"
    assert patients["covid/radiol.20201.fig4.png"] == "covid-radiol.20201"
    summary = take_inventory(scan).summary()
    assert summary["counts"] == {"normal": 16, "bacteria": 16, "virus": 9, "covid": 6}
    assert summary["patients"] == {"normal": 16, "bacteria": 8, "virus": 9, "covid": 3}
    for seed in range(3):
        split = split_records(scan.records, scan.classes, test=0.25, val=0.25, seed=seed)
        side = {rid: name for name, ids in split.items() for rid in ids}
        by_patient: dict[str, set[str]] = {}
        for r in scan.records:
            by_patient.setdefault(r.patient, set()).add(side[r.id])
        assert all(len(sides) == 1 for sides in by_patient.values()), by_patient


def test_cxr4_manifest_gives_the_patient(tmp_path):
    _kermany3_tree(tmp_path / "k")
    (tmp_path / "k" / "manifest.json").write_text(json.dumps([
        {"file": "bacteria/person3_bacteria_3.jpeg", "label": "bacteria", "patient": "child-A"},
        {"file": "virus/person53_virus_3.jpeg", "label": "virus", "patient": "child-A"}]))
    scan = plugins.get("dataset", "cxr4")(path=str(tmp_path / "k")).scan()
    patients = {r.id: r.patient for r in scan.records}
    assert patients["bacteria/person3_bacteria_3.jpeg"] == patients["virus/person53_virus_3.jpeg"] == "child-a"
    assert patients["bacteria/person3_bacteria_23.jpeg"] == "person3"
    (tmp_path / "k" / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json: not readable JSON"):
        plugins.get("dataset", "cxr4")(path=str(tmp_path / "k")).scan()
