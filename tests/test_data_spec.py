"""The declared data: spec, label mapping, volumes cut into slices, and splits that cannot leak."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from core.data.spec import DataSpec, DataSpecError, SourceSpec
from core.preprocess import PreprocessSpec
from core.data.sources import index_sources
from core.data.splits import split_sources
from tests.conftest import REPO

SHIPPED_SPEC = REPO / "data_specs" / "multisource.json"
SHARED = REPO.parent / "shared" / "data"


def test_the_shipped_spec_maps_every_44_class_folder_as_declared():
    spec = DataSpec.load(SHIPPED_SPEC)
    assert spec.class_names == ("glioma", "meningioma", "notumor", "other_lesion", "pituitary")
    feltrin = spec.source("feltrin")
    expected = {"Astrocitoma": "glioma", "Glioblastoma": "glioma", "Oligodendroglioma": "glioma",
                "Ependimoma": "glioma", "Meningioma": "meningioma", "_NORMAL": "notumor"}
    others = ["Carcinoma", "Ganglioglioma", "Germinoma", "Granuloma", "Meduloblastoma", "Neurocitoma", "Papiloma",
              "Schwannoma", "Tuberculoma"]
    expected |= {t: "other_lesion" for t in others}
    for kind, cls in expected.items():
        for seq in (("T1", "T2") if kind == "_NORMAL" else ("T1", "T1C+", "T2")):
            folder = f"{kind} {seq}"
            assert feltrin.label_for(folder) == cls, folder
            assert feltrin.sequence_for(folder) == seq
    # No type is left to a catch-all: a folder the spec does not name is not used at all.
    assert feltrin.label_for("Pineal tumour T1") is None
    brats, healthy = spec.source("brats"), spec.source("healthy")
    assert brats.labels == {"tumour": "glioma", "no_tumour": "notumor"} and set(brats.test_cases)
    assert healthy.case_and_sequence("nichart_Subj1_FL.nii.gz") == ("nichart_Subj1", "FLAIR")
    assert healthy.case_and_sequence("IXI012-HH-1211_T1.nii.gz") == ("IXI012-HH-1211", "T1")
    assert DataSpec.from_dict(spec.to_dict()) == spec  # the card records the spec and reads it back


@pytest.mark.parametrize("change,message", [
    (lambda d: d["sources"][0]["labels"].update({"x": "astrocytoma"}), "not in class_names"),
    (lambda d: d["sources"][0].update(kind="csv"), "kind must be one of"),
    (lambda d: d["sources"][1].update(val_cases=["a"], test_cases=["a"]), "listed for validation and for test"),
    (lambda d: d["sources"][0].update(colour="red"), "unknown field"),
    (lambda d: d.update(class_names=["a", "a"]), "distinct"),
    (lambda d: d["sources"][1].update(case_pattern="(unclosed"), "not a valid regex"),
])
def test_a_bad_spec_is_refused_with_the_reason(change, message):
    d = {"name": "t", "class_names": ["glioma", "notumor"], "sources": [
        {"name": "a", "kind": "folder_tree", "root": "a", "labels": {"g": "glioma"}},
        {"name": "v", "kind": "volumes", "root": "v", "layout": "files", "labels": {"no_tumour": "notumor"}}]}
    DataSpec.from_dict(d)  # valid as given
    change(d)
    with pytest.raises(DataSpecError, match=message):
        DataSpec.from_dict(d)


def test_train_py_refuses_a_bad_spec_without_a_traceback(tmp_path, capsys):
    import train

    bad = tmp_path / "spec.json"
    bad.write_text("{not json")
    assert train.main(["--data-spec", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    good = json.loads(SHIPPED_SPEC.read_text())
    bad.write_text(json.dumps(good))
    assert train.main(["--data-spec", str(bad), "--data-root", str(tmp_path), "--leave-out", "nowhere",
                       "--out", str(tmp_path / "o")]) == 2
    assert "--leave-out names no declared source" in capsys.readouterr().err


def _synthetic(tmp_path: Path) -> tuple[DataSpec, Path]:
    import train

    data = tmp_path / "data"
    spec = train.make_synthetic_dataset(data, per_class=12, seed=0, volumes=True)
    # Plant exact copies: a Testing image copied into Training, and a Training image copied twice.
    first = sorted((data / "Testing" / "glioma").iterdir())[0]
    (data / "Training" / "glioma" / "copy_of_testing.jpg").write_bytes(first.read_bytes())
    src = sorted((data / "Training" / "meningioma").iterdir())[0]
    for k in range(2):
        (data / "Training" / "meningioma" / f"dup{k}.jpg").write_bytes(src.read_bytes())
    return spec, data


def test_splits_keep_groups_and_cases_whole(tmp_path):
    spec, data = _synthetic(tmp_path)
    idx = index_sources(spec, data, PreprocessSpec(image_size=48), None, workers=1)
    split = split_sources(idx, spec.near_distance, seed=0)
    parts_of_group, parts_of_case = defaultdict(set), defaultdict(set)
    for r, p, g, fixed in zip(split.records, split.part, split.groups, split.fixed_test):
        if not fixed:
            parts_of_group[int(g)].add(p)
        if r.case:
            parts_of_case[r.case].add(p)
    assert all(len(p) == 1 for p in parts_of_group.values())  # no duplicate group straddles two parts
    # every slice of a case (all its sequences) lies in the part the spec names for it
    assert parts_of_case == {"case0": {"train"}, "case1": {"train"}, "case2": {"val"}, "case3": {"test"}}
    # the three byte-identical meningioma files are one group
    dups = [i for i, r in enumerate(split.records) if r.source == "synthetic" and r.path.startswith("meningioma/")
            and (r.path.endswith(("dup0.jpg", "dup1.jpg")) or r.path == sorted(
                x.path for x in split.records if x.path.startswith("meningioma/Tr_"))[0])]
    assert len({int(split.groups[i]) for i in dups}) == 1
    # the Testing image copied into Training stays a test image, but is not leak-free when its copy trains
    t = next(i for i, r in enumerate(split.records) if split.fixed_test[i] and r.path.endswith(first_name(data)))
    copy = next(i for i, r in enumerate(split.records) if r.path.endswith("copy_of_testing.jpg"))
    assert split.groups[t] == split.groups[copy] and split.part[t] == "test"
    assert split.leak_free[t] == (split.part[copy] == "test")
    # the same inputs give the same split (train.py --init-from and tools.validation_split rely on it)
    again = split_sources(index_sources(spec, data, PreprocessSpec(image_size=48), None, workers=1),
                          spec.near_distance, seed=0)
    assert list(again.part) == list(split.part)


def first_name(data: Path) -> str:
    return sorted((data / "Testing" / "glioma").iterdir())[0].name


def test_a_group_spanning_two_sources_lands_in_one_part(tmp_path):
    """A near copy of a Kaggle-like Training slice inside a second source follows the first source's split."""
    spec, data = _synthetic(tmp_path)
    second = data / "second" / "Glioma T2"
    second.mkdir(parents=True)
    trained = sorted((data / "Training" / "glioma").iterdir())
    for f in trained[:6]:
        (second / f"copy_{f.name}").write_bytes(f.read_bytes())
    extra = SourceSpec(name="second", kind="folder_tree", root="second", labels={"Glioma *": "glioma"},
                       sequences={"* T2": "T2"}, val_fraction=0.3, test_fraction=0.3)
    spec = DataSpec(spec.name, spec.class_names, spec.sources + (extra,), spec.near_distance)
    split = split_sources(index_sources(spec, data, PreprocessSpec(image_size=48), None, workers=1),
                          spec.near_distance, seed=0)
    by_path = {(r.source, r.path): p for r, p in zip(split.records, split.part)}
    for f in trained[:6]:
        assert by_path[("second", f"Glioma T2/copy_{f.name}")] == by_path[("synthetic", f"glioma/{f.name}")]
    assert {r.sequence for r in split.records if r.source == "second"} == {"T2"}


def test_volumes_are_read_by_their_affine_not_their_axis_order(tmp_path, rng):
    """The same anatomy stored as (L, P, S) and as (P, S, R) gives the same axial slices."""
    import nibabel as nib

    from core.data.synthetic import fake_volume
    from core.io.volumes import brain_slices, load_volume, tumour_areas_mm2

    vol, labels = fake_volume(rng, (40, 44, 30), tumour=True)  # axes: x=L, y=P, z=S as stored
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(vol, lps), tmp_path / "lps.nii.gz")
    psr = np.transpose(vol, (1, 2, 0))  # stored axes now P, S, R (like the IXI files): x flipped to R
    psr = psr[:, :, ::-1]
    affine = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], float)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(psr), affine), tmp_path / "psr.nii.gz")
    a, b = load_volume(tmp_path / "lps.nii.gz"), load_volume(tmp_path / "psr.nii.gz")
    assert a.n_slices == b.n_slices == 30
    for k in (5, 15, 25):
        assert np.array_equal(a.axial(k), b.axial(k))
    nib.save(nib.Nifti1Image(labels, lps), tmp_path / "labels.nii.gz")
    areas = tumour_areas_mm2(load_volume(tmp_path / "labels.nii.gz"))
    assert areas.sum() == labels.sum() and (areas > 0).any() and (areas == 0).any()
    # slices with almost no head are left out; the middle ones stay
    kept = brain_slices(a, 0.3)
    assert 15 in kept and 0 not in kept and 29 not in kept


def test_a_broken_volume_is_a_clear_error(tmp_path):
    from core.errors import ImageLoadError
    from core.io.volumes import load_volume

    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ImageLoadError, match="broken.nii.gz"):
        load_volume(bad)


def test_shipped_model_split_keeps_every_patient_in_one_part():
    """On the real data: the split recorded in the shipped card is rebuilt, verified against its fingerprints,
    and no volume case or duplicate group is in two parts."""
    if not (SHARED / "feltrin-44c").is_dir() or not (SHARED / "volumes").is_dir():
        pytest.skip(f"the multi-source data (feltrin-44c, volumes) is not under {SHARED}; skipping real-data check")
    card = json.loads((REPO / "weights" / "model_card.json").read_text())
    if not (card.get("data") or {}).get("spec"):
        pytest.skip("the shipped card records no data spec")
    from core.data.splits import split_of_model
    from core.model.card import ModelCard

    _, _, split = split_of_model(ModelCard.from_dict(card), SHARED)
    cases = defaultdict(set)
    for r, p in zip(split.records, split.part):
        if r.case:
            cases[(r.source, r.case)].add(p)
    assert cases and all(len(p) == 1 for p in cases.values())
    groups = defaultdict(set)
    for p, g, fixed in zip(split.part, split.groups, split.fixed_test):
        if not fixed:
            groups[int(g)].add(p)
    assert all(len(p) == 1 for p in groups.values())
