"""What `fer-automl search` takes from its flags: --format/--data replace the space's dataset,
--skip-corrupt reaches the start-up check and every trial, names and numbers are checked.

The flag-to-spec rules are checked without Ray (`_merge_spec`); one real tiny search on a real
image folder (written by `fer-automl data synth`, plus one corrupt file) shows the trials train
on that folder and skip the corrupt image."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import search_runs
from runners.cli import main
from _space_helpers import search_test_space


def _space(tmp: Path, **search) -> Path:
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(search_test_space(**search)))
    return path


def _merged(space_file, **flags):
    from runners.search.driver import _merge_spec
    from search_spaces import load_space

    space = load_space(space_file)
    return _merge_spec(space, {"name": None, "data": None, "format": None, "num_samples": None,
                               "storage_path": None, "address": None, "tracking_uri": None, "skip_corrupt": False,
                               **flags})


# --- the flags, no Ray -------------------------------------------------------------------------------

def test_format_and_data_replace_a_synthetic_dataset_keeping_image_size(tmp_path):
    spec = _merged("quickstart", format="imagefolder", data=str(tmp_path))
    # quickstart's dataset is {format: synthetic, n: 3600, image_size: 48, num_classes: 7}: the
    # generator's keys go, the stored image size stays
    assert spec.dataset.model_dump(exclude_unset=True) == {"format": "imagefolder", "path": str(tmp_path),
                                                           "image_size": 48}
    assert spec.dataset.n is None and spec.dataset.num_classes is None


CMU_FACES = Path(os.environ.get("FER_AUTOML_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) \
    / "cmu_faces"


@pytest.mark.skipif(not CMU_FACES.is_dir(), reason=f"{CMU_FACES} is absent")
def test_quickstart_with_format_cmu_faces_reads_the_folder(tmp_path, monkeypatch):
    """The README's `search quickstart --format ... --data DIR` (a raw pydantic error before): what the
    start-up check and every trial load is DIR, at quickstart's 48 px."""
    from runners.data import load_dataset
    from runners.search.driver import data_spec_from

    monkeypatch.setenv("FER_AUTOML_CACHE_DIR", str(tmp_path / "cache"))
    spec = _merged("quickstart", format="cmu_faces", data=str(CMU_FACES))
    ds = data_spec_from(spec.dataset).load(spec.dataset.image_size)
    assert ds.format == "cmu_faces" and ds.images.shape[1:3] == (48, 48)
    assert ds.fingerprint == load_dataset("cmu_faces", CMU_FACES, image_size=48).fingerprint


def test_data_alone_replaces_the_path_of_a_dataset_with_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    space = _space(tmp_path, dataset={"format": "csv", "path": str(tmp_path / "a"), "image_size": 40, "seed": 3})
    spec = _merged(space, data=str(tmp_path / "b"))
    assert (spec.dataset.format, spec.dataset.path, spec.dataset.image_size, spec.dataset.seed) == \
        ("csv", str(tmp_path / "b"), 40, 3)
    # another reader of the same files keeps the path
    spec = _merged(space, format="imagefolder")
    assert (spec.dataset.format, spec.dataset.path, spec.dataset.image_size) == ("imagefolder", str(tmp_path / "a"), 40)
    # back to synthetic data: no path
    spec = _merged(space, format="synthetic")
    assert (spec.dataset.format, spec.dataset.path, spec.dataset.image_size) == ("synthetic", None, 40)


def test_flag_errors_name_the_flag_and_file_errors_the_key(tmp_path):
    from fer_models.errors import UserError

    space = _space(tmp_path)
    with pytest.raises(UserError) as e:
        _merged(space, num_samples=0, name="a/b")
    lines = str(e.value).splitlines()
    assert any(line.startswith("--num-samples 0: ") and "greater than or equal to 1" in line for line in lines), lines
    assert any(line.startswith("--name 'a/b': ") and "one folder name" in line for line in lines), lines
    assert len(lines) == 2
    assert _merged(space).dataset.skip_corrupt is False
    assert _merged(space, skip_corrupt=True).dataset.skip_corrupt is True


def test_a_file_stem_that_is_not_a_folder_name_is_refused(tmp_path, monkeypatch):
    d = search_test_space()
    del d["search"]["name"]
    (tmp_path / "..yaml").write_text(yaml.safe_dump(d))  # its stem is "."
    monkeypatch.chdir(tmp_path)
    from fer_models.errors import UserError
    from runners.search.driver import run_search

    with pytest.raises(UserError, match="named after the file.*give search.name or --name"):
        run_search(str(tmp_path / "..yaml"), tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["..yaml"]


# --- one real search on a real folder ---------------------------------------------------------------

@pytest.fixture(scope="module")
def folder_search(module_tmp):
    """`search SPACE --format imagefolder --data FACES --skip-corrupt` on a synthetic-data space,
    FACES being 70 faces from `fer-automl data synth` plus one corrupt PNG."""
    import contextlib
    import io

    import ray

    tmp = module_tmp("folder-search")
    faces = tmp / "faces"
    assert main(["data", "synth", "--n", "70", "--size", "32", "--seed", "5", str(faces)]) == 0
    (faces / "happy" / "broken.png").write_bytes(b"\x89PNG but not really")
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump(search_test_space(
        name="folder-search", presets=[], num_samples=1, max_concurrent=1, scheduler="fifo",
        dataset={"format": "synthetic", "n": 56, "image_size": 32, "seed": 0})))
    d = yaml.safe_load(space.read_text())
    d["constants"]["train.epochs"] = 1
    space.write_text(yaml.safe_dump(d))
    uri = f"sqlite:///{tmp}/mlflow.db"
    out, cwd = io.StringIO(), os.getcwd()
    os.chdir(tmp)
    try:
        with contextlib.redirect_stdout(out):
            rc = main(["search", str(space), "--format", "imagefolder", "--data", str(faces), "--skip-corrupt",
                       "--tracking-uri", uri, "--storage-path", str(tmp / "ray")])
    finally:
        os.chdir(cwd)
        if ray.is_initialized():
            ray.shutdown()
    return {"rc": rc, "out": out.getvalue(), "uri": uri, "faces": faces, "tmp": tmp}


@pytest.mark.slow
def test_format_and_data_train_on_the_folder(folder_search):
    from runners.data import load_dataset

    assert folder_search["rc"] == 0, folder_search["out"][-3000:]
    client, _, parents, children = search_runs(folder_search["uri"], "folder-search")
    folder = load_dataset("imagefolder", folder_search["faces"], image_size=32, skip_corrupt=True, cache=False)
    synthetic = load_dataset("synthetic", n=56, image_size=32, seed=0)
    assert folder.fingerprint != synthetic.fingerprint
    params = parents[0].data.params
    assert params["dataset.format"] == "imagefolder" and params["dataset.fingerprint"] == folder.fingerprint
    assert params["dataset.path"] == str(folder_search["faces"])
    assert len(children) == 1
    for run in children:  # what the trial itself read (its model's lineage)
        local = client.download_artifacts(run.info.run_id, "trial/model_config.json", str(folder_search["tmp"]))
        lineage = json.loads(Path(local).read_text())["dataset"]
        assert (lineage["format"], lineage["fingerprint"]) == ("imagefolder", folder.fingerprint)


@pytest.mark.slow
def test_skip_corrupt_reaches_the_trials_and_is_recorded(folder_search):
    assert folder_search["rc"] == 0, folder_search["out"][-3000:]
    _, _, parents, children = search_runs(folder_search["uri"], "folder-search")
    params = parents[0].data.params
    assert params["dataset.num_skipped"] == "1" and params["dataset.num_images"] == "70"
    # the trial loaded the folder too (with the corrupt image): it finished instead of failing
    assert [r.info.status for r in children] == ["FINISHED"]
    assert "1 trials, 0 failed" in folder_search["out"]
