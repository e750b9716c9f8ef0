"""Reading the file: every way it can be unreadable is one line naming the file."""

import pytest

from hpsearch.spec.study_spec import SpecError, load_spec


def refusal(path) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert refusal(path) == f"{path}: no such file"


def test_directory(tmp_path):
    assert refusal(tmp_path) == f"{tmp_path}: is a directory, not a file"


@pytest.mark.parametrize("text", ["", "\n# only a comment\n"])
def test_empty_file(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    assert refusal(path) == f"{path}: empty file"


def test_not_a_mapping(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("- study\n- task\n")
    assert refusal(path) == (
        f"{path}: must be a mapping of sections (study, task, train, search_space, resources, tracking), got a list"
    )


def test_malformed_yaml(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("study:\n  name: x\n task: {\n")
    assert refusal(path) == (f"{path}: invalid YAML at line 3, column 2: "
                             "expected <block end>, but found '<block mapping start>'")


def test_unsafe_tags_are_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("study: !!python/object/apply:os.system ['true']\n")
    assert refusal(path).startswith(f"{path}: invalid YAML at line 1, column 8: ")


def test_not_utf8(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_bytes(b"study: \xff\n")
    assert refusal(path) == f"{path}: is not UTF-8 text"


def test_name_defaults_to_the_stem_and_source_is_kept(tmp_path):
    path = tmp_path / "my-space.yaml"
    path.write_text("study: {}\ntask: {model: {name: resnet18, weights: none}, data: {name: fake}}\n")
    spec = load_spec(path)
    assert spec.study.name == "my-space"
    assert spec.tracking.experiment == "my-space"
    assert spec.source == str(path)


def test_yaml_quirks_are_read_as_meant(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text(
        "study: {}\n"
        "task: {model: {name: resnet18, weights: none}, data: {name: fake}}\n"
        "train: {cuda_graphs: off, lr: 1e-3}\n"  # YAML 1.1: `off` is false, `1e-3` is a string
        "search_space:\n  weight_decay: {type: float, low: 1e-6, high: 1e-2, log: true}\n"
    )
    spec = load_spec(path)
    assert spec.settings["cuda_graphs"] == "off"
    assert spec.train["lr"] == 1e-3
    assert (spec.search_space["weight_decay"].low, spec.search_space["weight_decay"].high) == (1e-6, 1e-2)
