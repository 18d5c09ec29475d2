"""search_spaces.yamlio: the one reader of the YAML/JSON files a user writes (spaces, model configs).

PyYAML keeps the last of two equal keys without a word: a second `dimensions:` block, or a preset
written twice, silently replaced the first. Refused here, naming the key and both lines.
"""
from __future__ import annotations

import pytest

from fer_models.errors import UserError, UserPathError
from search_spaces import SpaceError, load_space
from search_spaces.yamlio import load_yaml, parse_yaml

SPACE = """\
dimensions:
  num_patches: {type: choice, values: [0, 4]}
  lr: {type: float, low: 1e-4, high: 0.1, log: true}
presets:
  small: {num_patches: 0, lr: 0.01}
"""


def test_a_duplicate_dimension_is_refused_with_both_lines(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(SPACE.replace("presets:", "  lr: {type: float, low: 0.01, high: 0.5}\npresets:"))
    with pytest.raises(SpaceError) as err:
        load_space(p)
    assert str(err.value) == (f"{p}: duplicate key 'lr' at line 4 (first at line 3): the second would silently "
                              "replace the first; give each key once")


def test_a_duplicate_top_level_block_is_refused(tmp_path):
    """The case the issue measured: a second block replaced the first, and the space loaded."""
    p = tmp_path / "s.yaml"
    p.write_text(SPACE + "dimensions:\n  epochs: {type: int, low: 1, high: 3}\n")
    with pytest.raises(SpaceError, match=r"duplicate key 'dimensions' at line 6 \(first at line 1\)"):
        load_space(p)


def test_duplicates_at_any_depth_and_in_flow_style():
    with pytest.raises(UserError, match=r"x.yaml: duplicate key 'a' at line 2 \(first at line 2\)"):
        parse_yaml("presets:\n  p: {a: 1, b: 2, a: 3}\n", "x.yaml")
    with pytest.raises(UserError, match=r"duplicate key 1 at line 3 \(first at line 2\)"):
        parse_yaml("m:\n  1: x\n  1: y\n", "x.yaml")


def test_what_yaml_allows_is_kept():
    """Equal keys in different mappings, merge keys overridden by the mapping, and 1e-4 as a float."""
    assert parse_yaml("a: {x: 1}\nb: {x: 2}\n") == {"a": {"x": 1}, "b": {"x": 2}}
    assert parse_yaml("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n") == {"base": {"x": 1, "y": 2},
                                                                           "c": {"x": 3, "y": 2}}
    assert parse_yaml("lr: 1e-4\nn: 5e3\ns: '1e-4'\n") == {"lr": 1e-4, "n": 5e3, "s": "1e-4"}


def test_unsafe_tags_stay_refused():
    with pytest.raises(UserError, match="not a YAML file"):
        parse_yaml("a: !!python/object/apply:os.system ['true']\n")


def test_json_files_errors_name_line_and_column(tmp_path):
    p = tmp_path / "m.json"
    p.write_text('{"backbone": "resnet18",\n "num_patches": 4,\n}')
    with pytest.raises(UserError, match=r"m.json: not a JSON file \(line 3, column 1\): Expecting property name"):
        load_yaml(p)
    p.write_text('{"num_patches": 4,\n "attention": "se",\n "num_patches": 9}')
    with pytest.raises(UserError, match=r"m.json: duplicate key 'num_patches' at line 3 \(first at line 1\)"):
        load_yaml(p)
    p.write_text('{"num_patches": 4, "attention": "se"}')
    assert load_yaml(p) == {"num_patches": 4, "attention": "se"}


def test_paths_that_are_not_files(tmp_path):
    with pytest.raises(UserPathError, match=r"space file '.*nope.yaml': no such file"):
        load_yaml(tmp_path / "nope.yaml", what="space file")
    with pytest.raises(UserPathError, match="is a folder, not a file"):
        load_yaml(tmp_path, what="--config")
    bad = tmp_path / "b.yaml"
    bad.write_bytes(b"a: 1\nb: \xff\n")
    with pytest.raises(UserError, match=r"b.yaml: not a YAML file \(not UTF-8 text: byte 0xff at line 2\)"):
        load_yaml(bad)
