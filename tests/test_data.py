"""Dataset readers (real Kvasir-SEG and tiny fixtures in every official format), transforms, sliding window."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import nibabel
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hidiff.data import (
    CHASEDB1,
    DATASETS,
    DRIVE,
    BraTS,
    CVCClinicDB,
    DataFileError,
    KvasirSEG,
    PairedAugment,
    Synapse,
    SyntheticShapes,
    build_dataset,
    default_root,
    one_hot,
    random_crop,
    resize_label,
    sample_generator,
    seeded_split,
    sliding_window_inference,
)
from hidiff.data.brats import zscore
from hidiff.data.sliding_window import gaussian_weight, num_windows


def kvasir_root() -> Path:
    env = os.environ.get("HIDIFF_KVASIR_ROOT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "Kvasir-SEG"


@pytest.fixture(scope="module")
def kvasir() -> Path:
    root = kvasir_root()
    if not (root / "images").is_dir():
        pytest.skip(f"Kvasir-SEG not found at {root} (set HIDIFF_KVASIR_ROOT to its folder to run these tests)")
    return root


def check_sample(sample: dict, channels: int, classes: int, size: tuple[int, int]) -> None:
    image, mask = sample["image"], sample["mask"]
    assert image.dtype == torch.float32 and image.shape == (channels, *size)
    assert mask.dtype == torch.float32 and mask.shape == (classes, *size)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    if classes > 1:
        assert torch.equal(mask.sum(0), torch.ones(size))
    assert isinstance(sample["id"], str)


def rng_mask(rng: np.random.Generator, shape: tuple[int, int], fraction: float = 0.3) -> np.ndarray:
    return rng.random(shape) < fraction


# ----------------------------------------------------------------------------------------------- Kvasir-SEG (real)


def test_kvasir_paper_split_sizes_disjoint_and_stable(kvasir):
    splits = {name: KvasirSEG(kvasir, name) for name in ("train", "val", "test")}
    assert [len(splits[n]) for n in ("train", "val", "test")] == [800, 100, 100]
    ids = [set(splits[n].ids) for n in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert ids[0] | ids[1] | ids[2] == set(KvasirSEG(kvasir, "all").ids)
    assert KvasirSEG(kvasir, "test").ids == splits["test"].ids
    # Pinned: the seeded split must not change silently between versions.
    assert splits["test"].ids[:3] == [
        "cju0roawvklrq0799vmjorwfv",
        "cju0sr5ghl0nd08789uzf1raf",
        "cju15czxqp3lv0835jvhgzurz",
    ]
    assert KvasirSEG(kvasir, "test", split_seed=1).ids != splits["test"].ids


def test_kvasir_official_and_pranet_splits(kvasir):
    train, val = KvasirSEG(kvasir, "official_train"), KvasirSEG(kvasir, "official_val")
    assert (len(train), len(val)) == (880, 120) and not set(train.ids) & set(val.ids)
    ptrain, ptest = KvasirSEG(kvasir, "pranet_train"), KvasirSEG(kvasir, "pranet_test")
    assert (len(ptrain), len(ptest)) == (900, 100) and not set(ptrain.ids) & set(ptest.ids)
    assert train.augment is not None and ptrain.augment is not None and val.augment is None


def test_kvasir_samples(kvasir):
    test = KvasirSEG(kvasir, "test")
    assert (test.num_classes, test.in_channels, test.class_names) == (1, 3, ("polyp",))
    assert test.augment is None
    for index in (0, 57):
        sample = test[index]
        check_sample(sample, 3, 1, (256, 256))
        assert sample["id"] == test.ids[index]
        assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
        assert 0 < float(sample["mask"].mean()) < 1  # every frame shows a polyp
    train = KvasirSEG(kvasir, "train", image_size=(64, 96))
    check_sample(train[3], 3, 1, (64, 96))
    assert torch.equal(train[3]["mask"], train[3]["mask"])  # augmentation is reproducible


# ----------------------------------------------------------------------------------------------- fixtures


def write_kvasir(root: Path, n: int = 10, size: tuple[int, int] = (30, 40)) -> list[str]:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ids = [f"id{i:02d}" for i in range(n)]
    for sample_id in ids:
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "images" / f"{sample_id}.jpg")
        mask = np.zeros(size, np.uint8)
        mask[5:20, 10:30] = 255
        Image.fromarray(mask).save(root / "masks" / f"{sample_id}.jpg", quality=90)
    return ids


def test_kvasir_fixture_reader_and_lists(tmp_path):
    ids = write_kvasir(tmp_path)
    ds = KvasirSEG(tmp_path, "all", image_size=(30, 40))
    assert ds.ids == ids
    sample = ds[0]
    check_sample(sample, 3, 1, (30, 40))
    expected = np.zeros((30, 40), np.float32)
    expected[5:20, 10:30] = 1
    # JPEG noise around the edge of the mask is removed by the > 127 threshold.
    assert np.array_equal(sample["mask"][0].numpy(), expected)
    (tmp_path / "official_train.txt").write_text("id00\nid01.jpg\n\n")
    assert KvasirSEG(tmp_path, "official_train").ids == ["id00", "id01"]
    parts = [KvasirSEG(tmp_path, s).ids for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [8, 1, 1]


def test_kvasir_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing folder .*nowhere"):
        KvasirSEG(tmp_path / "nowhere", "train")
    write_kvasir(tmp_path, n=3)
    with pytest.raises(FileNotFoundError, match=r"official_val\.txt.*\n.*images/<id>\.jpg"):
        KvasirSEG(tmp_path, "official_val")
    with pytest.raises(FileNotFoundError, match=r"pranet_test\.txt"):
        KvasirSEG(tmp_path, "pranet_train")
    (tmp_path / "masks" / "id01.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"masks/id01\.jpg"):
        KvasirSEG(tmp_path, "all")
    with pytest.raises(ValueError, match="split must be one of"):
        KvasirSEG(tmp_path, "training")


def test_kvasir_corrupt_and_mismatched_files(tmp_path):
    write_kvasir(tmp_path, n=3)
    (tmp_path / "images" / "id01.jpg").write_bytes(b"not a jpeg at all")
    Image.fromarray(np.zeros((31, 40), np.uint8)).save(tmp_path / "masks" / "id02.jpg")
    ds = KvasirSEG(tmp_path, "all")
    with pytest.raises(DataFileError, match=r"images/id01\.jpg"):
        ds[1]
    with pytest.raises(ValueError, match=r"images/id02\.jpg is 30x40.*masks/id02\.jpg is 31x40"):
        ds[2]


def write_cvc(root: Path, n: int = 20) -> None:
    rng = np.random.default_rng(1)
    (root / "Original").mkdir(parents=True)
    (root / "Ground Truth").mkdir()
    for i in range(1, n + 1):
        tifffile.imwrite(root / "Original" / f"{i}.tif", rng.integers(0, 255, (18, 24, 3), dtype=np.uint8))
        mask = np.where(rng_mask(rng, (18, 24)), 255, 0).astype(np.uint8)
        tifffile.imwrite(root / "Ground Truth" / f"{i}.tif", mask)


def test_cvc_fixture(tmp_path):
    write_cvc(tmp_path)
    parts = {s: CVCClinicDB(tmp_path, s, image_size=(18, 24)) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [16, 2, 2]
    assert set().union(*(set(p.ids) for p in parts.values())) == {str(i) for i in range(1, 21)}
    ordered = CVCClinicDB(tmp_path, "all", image_size=(18, 24)).ids
    assert ordered[:3] == ["1", "2", "3"] and ordered[-1] == "20"
    sample = parts["val"][0]
    check_sample(sample, 3, 1, (18, 24))
    truth = tifffile.imread(tmp_path / "Ground Truth" / f"{sample['id']}.tif") > 127
    assert np.array_equal(sample["mask"][0].numpy(), truth)
    image = tifffile.imread(tmp_path / "Original" / f"{sample['id']}.tif")
    assert torch.allclose(sample["image"], torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    check_sample(CVCClinicDB(tmp_path, "train", image_size=32)[0], 3, 1, (32, 32))


def test_cvc_corrupt_tiff(tmp_path):
    write_cvc(tmp_path, n=2)
    (tmp_path / "Ground Truth" / "2.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(DataFileError, match=r"Ground Truth/2\.tif"):
        CVCClinicDB(tmp_path, "all")[1]
    with pytest.raises(FileNotFoundError, match=r"Ground Truth.*expected layout"):
        (tmp_path / "Ground Truth" / "2.tif").unlink()
        CVCClinicDB(tmp_path, "all")


def write_gif(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).convert("P").save(path)


def write_drive(root: Path, size: tuple[int, int] = (40, 36)) -> None:
    rng = np.random.default_rng(2)
    for folder, numbers, kind in (("training", (21, 22), "training"), ("test", (1, 2, 3), "test")):
        for sub in ("images", "1st_manual", "mask"):
            (root / folder / sub).mkdir(parents=True)
        for n in numbers:
            tifffile.imwrite(
                root / folder / "images" / f"{n:02d}_{kind}.tif", rng.integers(0, 255, (*size, 3), np.uint8)
            )
            write_gif(root / folder / "1st_manual" / f"{n:02d}_manual1.gif", rng_mask(rng, size, 0.15))
            fov = np.zeros(size, bool)
            fov[4:-4, 4:-4] = True
            write_gif(root / folder / "mask" / f"{n:02d}_{kind}_mask.gif", fov)


def test_drive_fixture(tmp_path):
    write_drive(tmp_path)
    train = DRIVE(tmp_path, "train", crop_size=32)
    test = DRIVE(tmp_path, "test")
    assert train.ids == ["21_training", "22_training"] and test.ids == ["01_test", "02_test", "03_test"]
    sample = train[1]
    check_sample(sample, 3, 1, (32, 32))
    assert sample["fov"].shape == (1, 32, 32)
    full = test[2]
    check_sample(full, 3, 1, (40, 36))
    manual = np.asarray(Image.open(tmp_path / "test" / "1st_manual" / "03_manual1.gif").convert("L")) > 127
    assert np.array_equal(full["mask"][0].numpy(), manual)
    assert full["fov"].sum() == 32 * 28
    # Crops larger than the image are zero-padded; the mask and FOV follow the crop.
    big = DRIVE(tmp_path, "train", crop_size=48, augment=False)[0]
    check_sample(big, 3, 1, (48, 48))
    assert big["fov"].sum() == 32 * 28
    batch = next(iter(DataLoader(train, batch_size=2)))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["fov"].shape == (2, 1, 32, 32)


def test_drive_missing_annotation(tmp_path):
    write_drive(tmp_path)
    (tmp_path / "training" / "mask" / "22_training_mask.gif").unlink()
    with pytest.raises(FileNotFoundError, match=r"training/mask/22_training_mask\.gif"):
        DRIVE(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=r"missing folder .*test/images"):
        (tmp_path / "test" / "images").rename(tmp_path / "test" / "imgs")
        DRIVE(tmp_path, "test")


def write_chase(root: Path, names=("01L", "01R", "11L"), size: tuple[int, int] = (30, 34)) -> None:
    rng = np.random.default_rng(3)
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / f"Image_{name}.jpg")
        Image.fromarray(np.where(rng_mask(rng, size), 255, 0).astype(np.uint8)).save(root / f"Image_{name}_1stHO.png")
        Image.fromarray(np.zeros(size, np.uint8)).save(root / f"Image_{name}_2ndHO.png")


def test_chase_fixture(tmp_path):
    write_chase(tmp_path)
    train, test = CHASEDB1(tmp_path, "train", crop_size=16), CHASEDB1(tmp_path, "test")
    assert train.ids == ["Image_01L", "Image_01R"] and test.ids == ["Image_11L"]
    check_sample(train[0], 3, 1, (16, 16))
    full = test[0]
    check_sample(full, 3, 1, (30, 34))
    truth = np.asarray(Image.open(tmp_path / "Image_11L_1stHO.png")) > 127
    assert np.array_equal(full["mask"][0].numpy(), truth)
    (tmp_path / "Image_01R_1stHO.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"Image_01R_1stHO\.png"):
        CHASEDB1(tmp_path, "train")


def write_synapse(root: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    (root / "lists_Synapse").mkdir()
    train_names = ["case0005_slice000", "case0005_slice001", "case0006_slice010"]
    for name in train_names:
        label = rng.integers(0, 9, (16, 16)).astype(np.float32)
        np.savez(root / "train_npz" / f"{name}.npz", image=rng.random((16, 16), dtype=np.float32), label=label)
    volumes = {}
    for case, depth in (("case0001", 3), ("case0002", 2)):
        label = rng.integers(0, 9, (depth, 16, 16)).astype(np.float32)
        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "w") as f:
            f["image"] = rng.random((depth, 16, 16), dtype=np.float32)
            f["label"] = label
        volumes[case] = label
    (root / "lists_Synapse" / "train.txt").write_text("\n".join(train_names) + "\n")
    (root / "lists_Synapse" / "test_vol.txt").write_text("case0001\ncase0002\n")
    return volumes


def test_synapse_fixture(tmp_path):
    volumes = write_synapse(tmp_path)
    train = Synapse(tmp_path, "train", image_size=32)
    assert (train.num_classes, train.in_channels, len(train.class_names)) == (9, 1, 9)
    assert train.class_names[0] == "background" and train.class_names[-1] == "stomach"
    assert train.ids[2] == "case0006_slice010" and train.slices[2] == ("case0006", 10)
    check_sample(train[2], 1, 9, (32, 32))
    test = Synapse(tmp_path, "test", image_size=16)
    assert len(test) == 5 and test.ids[3] == "case0002_slice000" and test.augment is None
    sample = test[1]
    check_sample(sample, 1, 9, (16, 16))
    assert np.array_equal(sample["mask"].argmax(0).numpy(), volumes["case0001"][1])
    assert Synapse(tmp_path, "train").image_size == (256, 256) and Synapse(tmp_path, "test").image_size == (512, 512)


def test_synapse_errors(tmp_path):
    write_synapse(tmp_path)
    (tmp_path / "train_npz" / "case0005_slice001.npz").write_bytes(b"PK\x03\x04broken")
    with pytest.raises(DataFileError, match=r"case0005_slice001\.npz"):
        Synapse(tmp_path, "train")[1]
    (tmp_path / "test_vol_h5" / "case0002.npy.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataFileError, match=r"case0002\.npy\.h5"):
        Synapse(tmp_path, "test")
    (tmp_path / "lists_Synapse" / "test_vol.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"lists_Synapse/test_vol\.txt"):
        Synapse(tmp_path, "test")


def write_brats(root: Path, patients=("BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00005"), shape=(20, 18, 12)):
    rng = np.random.default_rng(5)
    affine = np.eye(4)
    for patient in patients:
        folder = root / patient
        folder.mkdir(parents=True)
        brain = np.zeros(shape, bool)
        brain[2:-2, 2:-2, :] = True
        for k, modality in enumerate(("t1", "t1ce", "t2", "flair")):
            volume = np.where(brain, rng.normal(100 * (k + 1), 10 * (k + 1), shape), 0).astype(np.float32)
            nibabel.save(nibabel.Nifti1Image(volume, affine), folder / f"{patient}_{modality}.nii.gz")
        seg = rng.choice(np.array([0, 1, 2, 4], np.uint8), size=shape)
        nibabel.save(nibabel.Nifti1Image(seg, affine), folder / f"{patient}_seg.nii.gz")


def test_brats_fixture(tmp_path):
    write_brats(tmp_path)
    ds = BraTS(tmp_path, "all", image_size=16, drop_bottom=3, drop_top=2)
    assert (ds.num_classes, ds.in_channels) == (4, 4) and len(ds) == 3 * 7
    assert ds.ids[0] == "BraTS2021_00000_z003" and ds.ids[-1] == "BraTS2021_00005_z009"
    sample = ds[8]  # second patient, z = 4
    check_sample(sample, 4, 4, (16, 16))
    # Reference: z-score the whole volume over its non-zero voxels, take slice z as (y, x), centre-crop 20x18 -> 16.
    folder = tmp_path / "BraTS2021_00002"
    flair = np.asarray(nibabel.load(folder / "BraTS2021_00002_flair.nii.gz").dataobj)
    seg = np.asarray(nibabel.load(folder / "BraTS2021_00002_seg.nii.gz").dataobj)
    expected_image = zscore(flair)[:, :, 4].T[1:17, 2:18]
    expected_label = np.where(seg == 4, 3, seg)[:, :, 4].T[1:17, 2:18]
    np.testing.assert_allclose(sample["image"][3].numpy(), expected_image, rtol=1e-5, atol=1e-5)
    assert np.array_equal(sample["mask"].argmax(0).numpy(), expected_label)
    parts = [
        BraTS(tmp_path, s, split_fractions=(0.34, 0.33, 0.33), drop_bottom=3, drop_top=2)
        for s in ("train", "val", "test")
    ]
    assert sorted(p for part in parts for p in part.patients) == sorted(ds.patients)
    assert all(len(part.patients) == 1 for part in parts)
    assert parts[0].augment is not None and parts[0].augment.clip is None


def test_zscore_over_brain():
    volume = np.zeros((6, 6, 3), np.float32)
    volume[1:5, 1:5] = np.arange(48, dtype=np.float32).reshape(4, 4, 3)
    out = zscore(volume)
    brain = volume != 0
    assert abs(out[brain].mean()) < 1e-5 and abs(out[brain].std() - 1) < 1e-5 and np.all(out[~brain] == 0)
    assert np.all(zscore(np.zeros((2, 2, 2))) == 0)


def test_brats_errors(tmp_path):
    write_brats(tmp_path, patients=("P1",))
    with pytest.raises(ValueError, match="none left after dropping"):
        BraTS(tmp_path, "all")
    seg_path = tmp_path / "P1" / "P1_seg.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.full((20, 18, 12), 3, np.uint8), np.eye(4)), seg_path)
    with pytest.raises(DataFileError, match=r"P1_seg\.nii\.gz.*\[3\]"):
        BraTS(tmp_path, "all", drop_bottom=3, drop_top=2)[0]
    nibabel.save(nibabel.Nifti1Image(np.zeros((20, 18, 11), np.float32), np.eye(4)), tmp_path / "P1" / "P1_t2.nii.gz")
    nibabel.save(nibabel.Nifti1Image(np.zeros((20, 18, 12), np.uint8), np.eye(4)), seg_path)
    with pytest.raises(ValueError, match=r"P1_t2\.nii\.gz has shape \(20, 18, 11\).*P1_seg\.nii\.gz"):
        BraTS(tmp_path, "all", drop_bottom=3, drop_top=2)[0]
    nibabel.save(nibabel.Nifti1Image(np.ones((20, 18, 12), np.float32), np.eye(4)), tmp_path / "P1" / "P1_t2.nii.gz")
    (tmp_path / "P1" / "P1_flair.nii.gz").write_bytes(b"\x1f\x8bbroken gzip")
    with pytest.raises(DataFileError, match=r"P1_flair\.nii\.gz"):
        BraTS(tmp_path, "all", drop_bottom=3, drop_top=2)[0]
    (tmp_path / "P1" / "P1_t1ce.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"P1/P1_t1ce\.nii\.gz"):
        BraTS(tmp_path, "all", drop_bottom=3, drop_top=2)


# ----------------------------------------------------------------------------------------------- synthetic, registry


def test_synthetic_shapes():
    ds = SyntheticShapes(split="val", image_size=64, length=8)
    again = SyntheticShapes(split="val", image_size=64, length=8)
    assert torch.equal(ds[3]["image"], again[3]["image"]) and ds[3]["id"] == "val_00003"
    test = SyntheticShapes(split="test", image_size=64, length=8)
    assert not torch.equal(ds[3]["image"], test[3]["image"])
    fractions = []
    for i in range(len(ds)):
        sample = ds[i]
        check_sample(sample, 3, 1, (64, 64))
        assert 0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1
        fractions.append(float(sample["mask"].mean()))
    assert 0.02 < np.mean(fractions) < 0.5
    multi = SyntheticShapes(split="train", image_size=(32, 48), num_classes=4, length=6, augment=False)
    present = set()
    for i in range(len(multi)):
        sample = multi[i]
        check_sample(sample, 3, 4, (32, 48))
        present |= set(sample["mask"].argmax(0).unique().tolist())
    assert present == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticShapes(num_classes=0)


def test_registry(tmp_path, monkeypatch):
    assert set(DATASETS) == {"kvasir", "cvc", "drive", "chase", "synapse", "brats", "synthetic"}
    ds = build_dataset("synthetic", "/ignored", "test", image_size=32, length=2)
    assert isinstance(ds, SyntheticShapes) and len(ds) == 2
    write_cvc(tmp_path / "cvc", n=3)
    assert isinstance(build_dataset("cvc", tmp_path / "cvc", "all", image_size=8), CVCClinicDB)
    with pytest.raises(ValueError, match="unknown dataset 'isic'"):
        build_dataset("isic", tmp_path, "train")

    monkeypatch.setenv("HIDIFF_KVASIR_ROOT", str(tmp_path / "kv"))
    assert default_root("kvasir") == tmp_path / "kv"
    monkeypatch.delenv("HIDIFF_KVASIR_ROOT")
    monkeypatch.delenv("HIDIFF_DRIVE_ROOT", raising=False)
    work = tmp_path / "repo"
    work.mkdir()
    monkeypatch.chdir(work)
    assert default_root("kvasir") is None and default_root("synthetic") is None
    with pytest.raises(FileNotFoundError, match="HIDIFF_DRIVE_ROOT"):
        build_dataset("drive", None, "train")
    write_kvasir(tmp_path / "shared" / "data" / "Kvasir-SEG", n=2)
    assert default_root("kvasir").samefile(tmp_path / "shared" / "data" / "Kvasir-SEG")
    assert len(build_dataset("kvasir", None, "all", image_size=8)) == 2


# ----------------------------------------------------------------------------------------------- transforms


def test_seeded_split():
    ids = [f"s{i}" for i in range(1000)]
    parts = seeded_split(ids, (0.8, 0.1, 0.1), seed=0)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [800, 100, 100]
    assert seeded_split(list(reversed(ids)), (0.8, 0.1, 0.1), seed=0) == parts
    assert [len(v) for v in seeded_split(ids[:612], (0.8, 0.1, 0.1), 0).values()] == [490, 61, 61]
    with pytest.raises(ValueError, match="sum"):
        seeded_split(ids, (0.8, 0.1, 0.2), seed=0)


def test_augmentation_reproducible_and_aligned():
    ds = SyntheticShapes(split="train", image_size=48, length=4)
    first = ds[2]
    assert torch.equal(first["image"], ds[2]["image"]) and torch.equal(first["mask"], ds[2]["mask"])
    plain = SyntheticShapes(split="train", image_size=48, length=4, augment=False)[2]
    assert not torch.equal(first["image"], plain["image"])
    ds.set_epoch(1)
    assert not torch.equal(ds[2]["image"], first["image"])  # a new epoch draws new augmentations
    other = SyntheticShapes(split="train", image_size=48, length=4, seed=0)
    other.set_epoch(1)
    assert torch.equal(other[2]["image"], ds[2]["image"]) and torch.equal(other[2]["mask"], ds[2]["mask"])

    # Geometry only: channel 0 of the image equals the mask before and after, whatever the draws.
    label = torch.from_numpy(rng_mask(np.random.default_rng(0), (20, 28))).long()
    image = torch.stack([label.float(), torch.rand(20, 28), torch.rand(20, 28)])
    geometric = PairedAugment(scale=0.0, brightness=0.0)
    shapes = set()
    for index in range(12):
        out, (lab,) = geometric(image, [label], sample_generator(0, 0, index))
        assert torch.equal(out[0], lab.float())
        shapes.add(tuple(out.shape))
    assert shapes == {(3, 20, 28)}  # non-square: rotations by 180 degrees only
    square = torch.stack([label[:20, :20].float()] * 3)
    zoomed = PairedAugment(scale=0.3, brightness=0.2)
    for index in range(6):
        out, (lab,) = zoomed(square, [label[:20, :20]], sample_generator(1, 0, index))
        assert out.shape == (3, 20, 20) and lab.shape == (20, 20)
        assert 0 <= float(out.min()) and float(out.max()) <= 1
    with pytest.raises(ValueError, match="scale"):
        PairedAugment(scale=1.5)


def test_resize_crop_one_hot():
    label = torch.tensor([[0, 1], [2, 3]])
    big = resize_label(label, 4)
    assert torch.equal(big, label.repeat_interleave(2, 0).repeat_interleave(2, 1))
    image = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(2, 5, 7)
    lab = torch.arange(35).reshape(5, 7)
    crop, (crop_lab,) = random_crop(image, [lab], (3, 4), torch.Generator().manual_seed(0))
    top, left = divmod(int(crop_lab[0, 0]), 7)
    assert torch.equal(crop, image[:, top : top + 3, left : left + 4])
    padded, (padded_lab,) = random_crop(image, [lab], 8, torch.Generator().manual_seed(0))
    assert padded.shape == (2, 8, 8) and torch.equal(padded[:, :5, :7], image) and padded_lab[5:].eq(0).all()
    onehot = one_hot(label, 4)
    assert onehot.shape == (4, 2, 2) and torch.equal(onehot.argmax(0), label)
    assert torch.equal(one_hot(torch.tensor([[0, 2]]), 1), torch.tensor([[[0.0, 1.0]]]))
    with pytest.raises(ValueError, match="0..2"):
        one_hot(label, 3)


# ----------------------------------------------------------------------------------------------- sliding window


@pytest.mark.parametrize("shape", [(2, 3, 70, 90), (1, 3, 20, 50), (1, 1, 32, 32)])
@pytest.mark.parametrize("gaussian", [False, True])
def test_sliding_window_exact_on_pointwise_predictors(shape, gaussian):
    image = torch.rand(shape)
    weight = torch.randn(2, shape[1], 1, 1)

    def linear(x):
        return torch.nn.functional.conv2d(x, weight, bias=torch.tensor([0.5, -1.0]))

    out = sliding_window_inference(linear, image, window=32, overlap=0.5, gaussian=gaussian, batch_size=3)
    assert out.shape == (shape[0], 2, *shape[2:])
    torch.testing.assert_close(out, linear(image), rtol=1e-5, atol=1e-5)
    const = sliding_window_inference(lambda x: torch.full((x.shape[0], 3, *x.shape[2:]), 0.25), image, window=(24, 16))
    assert torch.equal(const, torch.full((shape[0], 3, *shape[2:]), 0.25))


def test_sliding_window_averages_overlaps():
    """A window-position-dependent predictor: every pixel must be the mean over the windows covering it."""
    image = torch.zeros(1, 1, 10, 13)

    def local_x(x):  # column index inside the window
        return torch.arange(x.shape[-1], dtype=torch.float32).expand(x.shape[0], 1, *x.shape[-2:]).clone()

    out = sliding_window_inference(local_x, image, window=(6, 8), overlap=0.5)
    rows, cols = [0, 3, 4], [0, 4, 5]  # stride 3 and 4, last window aligned to the border
    expected = torch.zeros(10, 13)
    count = torch.zeros(10, 13)
    for top in rows:
        for left in cols:
            expected[top : top + 6, left : left + 8] += torch.arange(8, dtype=torch.float32)
            count[top : top + 6, left : left + 8] += 1
    torch.testing.assert_close(out[0, 0], expected / count)
    assert num_windows(10, 13, (6, 8), 0.5) == 9
    calls = []
    sliding_window_inference(lambda x: calls.append(x.shape[0]) or x, torch.zeros(2, 1, 10, 13), (6, 8), batch_size=4)
    assert calls == [4, 4, 4, 4, 2]


def test_sliding_window_errors_and_weights():
    weight = gaussian_weight((9, 9))
    assert weight[4, 4] == 1 and float(weight.min()) >= 1e-3 and torch.equal(weight, weight.T)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_inference(lambda x: x, torch.zeros(1, 1, 8, 8), 4, overlap=1.0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        sliding_window_inference(lambda x: x, torch.zeros(1, 8, 8), 4)
    with pytest.raises(ValueError, match="predict_fn must return"):
        sliding_window_inference(lambda x: x[..., :2], torch.zeros(1, 1, 8, 8), 4)
