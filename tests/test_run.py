"""``xaicxr run`` so far (dataset -> split), config validation and patient-grouped splits."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xaicxr.cli import app
from xaicxr.config import load_config
from xaicxr.plugins import Record
from xaicxr.stages.split import split_records
from xaicxr.errors import ConfigError

from conftest import CXR3

runner = CliRunner()

TINY = """
[dataset]
name = "phantom"
n_per_class = 12
size = 32
seed = 3

[split]
test = 0.25
val = 0.25
seed = 1
"""


def _write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _run(*args: str):
    result = runner.invoke(app, ["run", *args, "--until", "split", "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_run_writes_config_split_and_skipped(tmp_path):
    out = tmp_path / "run"
    summary = _run(str(_write(tmp_path, TINY)), "--out", str(out))
    assert summary["stages_run"] == ["dataset", "split"]
    cfg = tomllib.loads((out / "config.toml").read_text())
    assert cfg["dataset"] == {"name": "phantom", "n_per_class": 12, "size": 32, "seed": 3,
                              "max_pixels": 100_000_000, "resize": "pad",
                              "difficulty": "easy"}  # the demo's, under the keys given
    assert cfg["split"]["group_by_patient"] is True
    split = json.loads((out / "split.json").read_text())
    assert split["sizes"] == {"train": 24, "val": 12, "test": 12}
    assert all(split["counts"][s]["covid"] == n for s, n in (("train", 6), ("val", 3), ("test", 3)))
    assert json.loads((out / "skipped.json").read_text()) == []
    ids = split["train"] + split["val"] + split["test"]
    assert len(ids) == len(set(ids)) == 48


def test_run_resumes_and_reruns_what_changed(tmp_path):
    out = tmp_path / "run"
    config = _write(tmp_path, TINY)
    _run(str(config), "--out", str(out))
    again = _run(str(config), "--out", str(out))
    assert again["stages_run"] == [] and again["stages_skipped"] == ["dataset", "split"]
    changed = _write(tmp_path, TINY.replace("seed = 1", "seed = 2"), "changed.toml")
    third = _run(str(changed), "--out", str(out))
    assert third["stages_run"] == ["split"]


def test_run_with_external_test_path(tmp_path):
    for name, value in (("train_set", 40), ("other_site", 200)):
        for cls in ("a", "b"):
            for i in range(6):
                path = tmp_path / name / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (20, 20), value + i).save(path)
    config = _write(tmp_path, f"""
[dataset]
name = "folder"
path = "{tmp_path / 'train_set'}"
test_path = "{tmp_path / 'other_site'}"
[split]
val = 0.5
""")
    _run(str(config), "--out", str(tmp_path / "run"))
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["external_test"] is True
    assert len(split["test"]) == 12 and all(i.startswith("external/") for i in split["test"])
    assert split["sizes"]["train"] == 6 and split["sizes"]["val"] == 6


def _source_tree(root: Path) -> None:
    """Two classes; ``sick`` images come from two journals, ``well`` from numbered patients."""
    files = [f"well/{p:04d}_{k}.png" for p in range(8) for k in range(2)]
    files += [f"sick/lancet-case{c}{v}.png" for c in range(3) for v in "ab"]
    files += [f"sick/nejm{c}_f{v}.png" for c in range(5) for v in "ab"]
    for i, name in enumerate(files):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (20, 20), i).save(root / name)


def test_run_with_leave_source_out_test_pattern(tmp_path):
    _source_tree(tmp_path / "set")
    config = _write(tmp_path, rf"""
[dataset]
name = "folder"
path = "{tmp_path / 'set'}"
patient_pattern = ['^(\d{{4}})_', '^(lancet-case\d)', '^(nejm\d)_']
[split]
val = 0.25
test_pattern = '^sick/lancet|^well/000[01]_1'
""")
    _run(str(config), "--out", str(tmp_path / "run"))
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["test_set"] == "leave-source-out ([split] test_pattern)"
    assert sorted(split["test"]) == sorted(
        [f"sick/lancet-case{c}{v}.png" for c in range(3) for v in "ab"]
        + [f"well/000{p}_{k}.png" for p in (0, 1) for k in range(2)])
    assert split["patients_in_several_splits"] == 0
    assert split["sizes"]["test"] == 10 and split["sizes"]["train"] + split["sizes"]["val"] == 22
    assert all(split["counts"]["val"][c] >= 2 for c in ("sick", "well"))
    assert not any("lancet" in i for i in split["train"] + split["val"])


@pytest.mark.parametrize("split_table, message", [
    ("test_pattern = '^nothing'", "matches no image id (ids look like"),
    ("test_pattern = '.'", "holds out every image"),
    ("test_pattern = '(unclosed'", "is not a valid regular expression"),
])
def test_test_pattern_errors_are_clear(tmp_path, split_table, message):
    _source_tree(tmp_path / "set")
    config = _write(tmp_path, f"[dataset]\nname = 'folder'\npath = '{tmp_path / 'set'}'\n[split]\n{split_table}\n")
    result = runner.invoke(app, ["run", str(config), "--out", str(tmp_path / "r"), "--until", "split"])
    assert result.exit_code == 2 and message in result.stderr


@pytest.mark.parametrize("text, clash", [
    ("[dataset]\nname = 'folder'\npath = 'x'\ntest_path = 'y'\n[split]\ntest_pattern = 'c'\n",
     "[dataset] test_path"),
    ("[split]\ntest_pattern = 'c'\nuse_dataset_split = true\n", "[split] use_dataset_split"),
    ("[split]\ntest_pattern = 'c'\ntest = 0.3\n", "[split] test"),
])
def test_test_pattern_excludes_other_test_set_choices(tmp_path, text, clash):
    config = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(f"cannot be combined with {clash}")):
        load_config(config)
    records = [Record(id=f"a/{i}", label="a", path=Path("x")) for i in range(4)]
    with pytest.raises(ConfigError, match="cannot be combined"):
        split_records(records, ["a"], test_pattern="a/1", external_test=records[:1])


def test_test_pattern_drops_the_test_fraction_and_keeps_every_class_trainable(tmp_path):
    config = _write(tmp_path, "[split]\ntest_pattern = 'covid/'\n")
    assert "test" not in load_config(config)["split"]
    records = [Record(id=f"{c}/{i}", label=c, path=Path("x")) for c in ("a", "b") for i in range(4)]
    with pytest.raises(ConfigError, match="holds out every image of class 'b'"):
        split_records(records, ["a", "b"], test_pattern="^b/|^a/1")


def test_changing_resize_keeps_scan_and_split_but_reruns_training(tmp_path):
    from xaicxr.pipeline import stage_hashes

    out = tmp_path / "run"
    _run(str(_write(tmp_path, TINY)), "--out", str(out))
    stretched = _write(tmp_path, TINY.replace("seed = 3", "seed = 3\nresize = 'stretch'"), "s.toml")
    again = _run(str(stretched), "--out", str(out))
    assert again["stages_skipped"] == ["dataset", "split"]
    padded, stretched_hashes = stage_hashes(load_config(_write(tmp_path, TINY))), stage_hashes(load_config(stretched))
    assert [padded[s] == stretched_hashes[s] for s in ("dataset", "split", "train")] == [True, True, False]
    assert tomllib.loads((out / "config.toml").read_text())["dataset"]["resize"] == "stretch"


@pytest.mark.parametrize("text, message", [
    ("[dataset]\nname = 'phantom'\nn_per_klass = 3\n", "unknown key 'n_per_klass' in [dataset] in {file}"),
    ("[dataset]\nname = 'phantom'\nsize = 'big'\n", "wrong type for 'size' in [dataset] in {file}"),
    ("[dataset]\nname = 'phantom'\nresize = 'squash'\n", "wrong type for 'resize' in [dataset] in {file}"),
    ("[split]\ntest = 'a lot'\n", "wrong type for 'test' in [split] in {file}: got 'a lot', expected a number"),
    ("[split]\nshuffle = true\n", "unknown key 'shuffle' in [split] in {file}"),
    ("[splits]\ntest = 0.1\n", "unknown table [splits] in {file}"),
    ("[dataset]\nname = 'phantomm'\n", "Did you mean 'phantom'?"),
    ("[dataset\n", "is not valid TOML"),
])
def test_config_errors_name_key_and_file(tmp_path, text, message):
    config = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert message.format(file=config) in str(err.value)
    result = runner.invoke(app, ["run", str(config), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert message.format(file=config) in result.stderr


def test_default_config_is_the_phantom_demo():
    cfg = load_config(None)
    assert cfg["dataset"]["name"] == "phantom"


def _patients_records(n_patients: int = 60) -> list[Record]:
    records = []
    for p in range(n_patients):
        label = ("normal", "sick")[p % 2]
        for k in range(1 + p % 4):
            records.append(Record(id=f"{p}/{k}", label=label, path=Path(f"{p}-{k}.png"), patient=f"p{p}"))
    return records


def test_split_keeps_patients_together_and_is_stratified_and_seeded():
    records = _patients_records()
    split = split_records(records, ["normal", "sick"], test=0.2, val=0.1, seed=5)
    owner = {}
    for name, ids in split.items():
        for i in ids:
            patient = i.split("/")[0]
            assert owner.setdefault(patient, name) == name, f"patient {patient} in two splits"
    total = len(records)
    assert abs(len(split["test"]) / total - 0.2) < 0.05
    assert abs(len(split["val"]) / total - 0.1) < 0.05
    for name in ("train", "val", "test"):
        labels = {int(i.split("/")[0]) % 2 for i in split[name]}
        assert labels == {0, 1}
    assert split == split_records(records, ["normal", "sick"], test=0.2, val=0.1, seed=5)
    assert split != split_records(records, ["normal", "sick"], test=0.2, val=0.1, seed=6)
    ungrouped = split_records(records, ["normal", "sick"], test=0.2, val=0.1, seed=5, group_by_patient=False)
    shared = {i.split("/")[0] for i in ungrouped["test"]} & {i.split("/")[0] for i in ungrouped["train"]}
    assert shared, "without grouping, some patient should straddle splits (the test's premise)"


def test_dataset_split_folders_are_honoured():
    records = [Record(id=f"{s}/{i}", label=("a", "b")[i % 2], path=Path("x"), subset=s)
               for s in ("train", "test") for i in range(20)]
    split = split_records(records, ["a", "b"], val=0.2, use_dataset_split=True)
    assert all(i.startswith("test/") for i in split["test"]) and len(split["test"]) == 20
    assert len(split["val"]) == 4 and all(i.startswith("train/") for i in split["val"])


@pytest.mark.parametrize("example", sorted((Path(__file__).parents[1] / "examples").glob("*.toml")),
                         ids=lambda p: p.name)
def test_example_configs_are_valid(example, tmp_path):
    if "[model]" in example.read_text():  # its model file is what examples/own_model.py writes: one stands in
        import tomllib

        keras = pytest.importorskip("keras")
        spec = tomllib.loads(example.read_text())["model"]
        stand_in = (tmp_path / "examples" / spec["path"]).resolve()
        stand_in.parent.mkdir(parents=True)
        keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(2, 3),
                          keras.layers.GlobalAveragePooling2D(),
                          keras.layers.Dense(len(spec["classes"]), activation="softmax")]).save(stand_in)
        copy = tmp_path / "examples" / example.name
        copy.parent.mkdir(exist_ok=True)
        copy.write_text(example.read_text())
        example = copy
    if example.stem.endswith("-study"):
        from xaicxr.config import resolve
        from xaicxr.study import load_study

        _, variants = load_study(example)
        configs = [resolve(raw, str(example)) for _, raw in variants]
    else:
        configs = [load_config(example)]
    assert all(cfg["explain"] and cfg["aggregate"] for cfg in configs)
    shared = CXR3.parent
    for cfg in configs:  # relative paths resolve from the example's folder: they must reach the shared sets
        for key in ("path", "covid_path", "test_path"):
            value = cfg["dataset"].get(key)
            if isinstance(value, str) and "shared/data" in value and shared.is_dir():
                assert Path(value).exists(), f"{example.name}: [dataset] {key} = {value} does not exist"


@pytest.mark.skipif(not CXR3.is_dir(), reason=f"real data set absent: {CXR3} (see shared/data/README.md)")
def test_cxr3_leave_source_out_example_holds_out_whole_sources(tmp_path):
    example = Path(__file__).parents[1] / "examples" / "cxr3-real-external.toml"
    config = tmp_path / "lso.toml"
    config.write_text(example.read_text().replace('"../../shared/data/cxr3-real"', repr(str(CXR3))))
    _run(str(config), "--out", str(tmp_path / "run"))
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["test_set"] == "leave-source-out ([split] test_pattern)"
    assert split["counts"]["test"] == {"COVID-19": 55, "No_findings": 119, "Pneumonia": 94}
    assert split["patients_in_several_splits"] == 0
    trained = split["train"] + split["val"]
    assert not any(i.startswith("COVID-19/1-s2.0") or ".pdf-" in i for i in trained)
    assert sum(i.startswith("COVID-19/") for i in trained) == 69


def test_mode_L_reruns_from_train_and_leaves_earlier_hashes_alone(tmp_path):
    from xaicxr.config import resolve
    from xaicxr.io.imagecache import build_image_cache
    from xaicxr.pipeline import stage_hashes

    plain = stage_hashes(resolve(tomllib.loads(TINY)))
    gray = stage_hashes(resolve(tomllib.loads(TINY.replace('name = "phantom"', 'name = "phantom"\nmode = "L"'))))
    assert [s for s in plain if plain[s] == gray[s]] == ["dataset", "split"]
    with pytest.raises(ConfigError, match="'mode'"):
        resolve(tomllib.loads(TINY.replace('name = "phantom"', 'name = "phantom"\nmode = "RGB"')))
    colour = tmp_path / "c.png"
    Image.new("RGB", (12, 8), (250, 10, 95)).save(colour)
    records = [Record(id="c.png", label="a", path=colour)]
    split = {"train": ["c.png"], "val": [], "test": []}
    as_decoded, _ = build_image_cache(tmp_path / "raw.h5", split, records, ["a"], 8)
    as_l, _ = build_image_cache(tmp_path / "l.h5", split, records, ["a"], 8, mode="L")
    level = 0.299 * 250 + 0.587 * 10 + 0.114 * 95  # 91.45: an "L" file stores 91
    assert as_decoded.read(np.array([0]))["images"][0, 4, 6] == pytest.approx(level / 255, abs=3e-4)
    assert as_l.read(np.array([0]))["images"][0, 4, 6] == pytest.approx(91 / 255, abs=3e-4)
