"""Hostile and broken YAML ends in a ConfigError naming FILE:LINE, fast and in little memory.

Each test here failed before its fix: the alias bomb expanded every alias (9 s and 1.3 GB at 7
levels, killed at 6.4 GB at 9), a self-referencing alias or a deeply nested file ended in
RecursionError, an override of a merged key (``<<: *defaults``) was a "duplicate key", and a
number past 4300 digits or a bad ``!!bool``/``!!timestamp`` crashed with a traceback.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.config import ConfigError, load_config
from edge_agent.config.loader import MAX_CONFIG_BYTES
from edge_agent.config.yaml_lines import MAX_ALIAS_VALUES, parse_yaml_with_lines

MINIMAL = "device_id: van-07\ncamera:\n  source: /dev/video0\n"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def alias_bomb(levels: int, width: int = 9) -> str:
    """``a: &a [x,x,...]``, ``b: &b [*a,*a,...]``, ...: width**levels values in a few hundred bytes."""
    names = [f"l{i}" for i in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [{','.join(['x'] * width)}]"]
    for prev, name in zip(names, names[1:]):
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_at_the_alias_line_quickly(tmp_path: Path):
    text = MINIMAL + alias_bomb(6)  # 531441 values; the old loader took ~2 s and 150 MB here
    t0 = time.process_time()  # CPU time of this process: a busy machine does not fail the test
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text), environ={})
    assert time.process_time() - t0 < 1.0  # a runaway expansion still does
    [issue] = exc.value.issues
    assert issue.line is not None and 5 <= issue.line <= 9  # an alias line of the bomb, not the top
    assert f"more than {MAX_ALIAS_VALUES} values" in issue.message and "alias *l" in issue.message
    assert "write the values out" in issue.message


def test_alias_bomb_nine_levels_check_config_cli(tmp_path: Path):
    """The reported case end to end, in a child limited to 1 GiB so a regression cannot take the machine."""
    path = write(tmp_path, alias_bomb(9))
    assert len(path.read_bytes()) < 400

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1024**3, 1024**3))

    code = "import sys; from edge_agent.cli import main; sys.exit(main(['check-config', sys.argv[1]]))"
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                          preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{path}:4: alias *l2: aliases and merge keys in this file expand to more than" in proc.stderr


def test_alias_bomb_in_a_variable_is_refused(tmp_path: Path):
    bomb = "[" + ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" if i else "&a0 [x, x, x, x, x, x, x, x, x]"
                           for i in range(7)) + "]"
    with pytest.raises(ConfigError, match=r"env CRACKSEG_MODEL__PROVIDERS: model.providers: not a valid YAML .*"
                                          r"billion laughs"):
        load_config(write(tmp_path, MINIMAL), environ={"CRACKSEG_MODEL__PROVIDERS": bomb})


def test_merge_keys_work_and_explicit_keys_override_them(tmp_path: Path):
    text = """\
device_id: van-07
camera: &cam
  source: /dev/video0
  fps: 5
position:
  provider: &gps {type: gpsd, host: 10.0.0.2, port: 2947}
updates:
  command_public_keys:
    - &key {key_id: office, credential: office-key}
    - <<: *key
      key_id: laptop
measurement:
  severity: {<<: [{low_below_mm: 5}, {low_below_mm: 7, high_above_mm: 50}], high_above_mm: 60}
"""
    cfg = load_config(write(tmp_path, text), environ={})
    assert [(k.key_id, k.credential) for k in cfg.updates.command_public_keys] == [
        ("office", "office-key"), ("laptop", "office-key")]
    # earlier mappings in a merge list win over later ones; the mapping's own keys win over all
    assert (cfg.measurement.severity.low_below_mm, cfg.measurement.severity.high_above_mm) == (5, 60)


def test_a_merged_bad_value_names_the_line_where_it_is_written(tmp_path: Path):
    text = MINIMAL + "updates:\n  command_public_keys:\n    - &key {key_id: 'bad id', credential: k}\n" \
                     "    - <<: *key\n      credential: other\n"
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text), environ={})
    assert {(i.line, i.key) for i in exc.value.issues} == {(6, "updates.command_public_keys[0].key_id"),
                                                           (6, "updates.command_public_keys[1].key_id")}


@pytest.mark.parametrize("text,message,line", [
    ("a: &a [1, *a]\n", "alias *a is used inside its own anchor &a", 1),
    ("a: &a {<<: *a}\n", "merges the mapping it is in", 1),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 20 levels deep", 1),
    ("a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 40)), "deep (through aliases)", 20),
    ("a: [" + ",".join(["1"] * 30000) + "]\n", "more than 20000 values", 1),
    ("a: " + "9" * 5000 + "\n", "cannot read the value '999", 1),
    ("a: !!bool maybe\n", "cannot read the value 'maybe' as bool", 1),
    ("a: !!timestamp soon\n", "cannot read the value 'soon' as timestamp", 1),
    ("a: !!python/object:os.system x\n", "YAML syntax error: could not determine a constructor", 1),
    ("a: *nowhere\n", "found undefined alias", 1),
    ("a: 1\n---\nb: 2\n", "but found another document", 2),
    ("a: \x01\n", "special characters are not allowed", None),
])
def test_hostile_yaml_is_a_config_error_with_a_line(text: str, message: str, line: int | None):
    t0 = time.process_time()  # CPU time, not wall clock: only a runaway parse fails this
    with pytest.raises(ConfigError) as exc:
        parse_yaml_with_lines(text, "f.yaml")
    assert time.process_time() - t0 < 2.0
    [issue] = exc.value.issues
    assert message in issue.message and issue.source == "f.yaml" and issue.line == line


def test_non_word_keys_and_duplicate_merge_keys_are_issues():
    with pytest.raises(ConfigError) as exc:
        parse_yaml_with_lines("? [a, b]\n: 1\nc: {<<: {x: 1}, <<: {y: 2}}\n", "f.yaml")
    messages = [(i.line, i.message) for i in exc.value.issues]
    assert (1, "keys must be plain words, got a list") in messages
    assert (3, "duplicate merge key '<<': merge several mappings with '<<: [*a, *b]'") in messages


def test_oversized_and_non_text_files_are_refused(tmp_path: Path):
    big = tmp_path / "big.yaml"
    big.write_text(MINIMAL + "#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match=r"big.yaml: larger than 1 MiB: a device config is a few KB"):
        load_config(big, environ={})
    binary = tmp_path / "clip.yaml"
    binary.write_bytes(b"\x00\xff\xfe" * 100)
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(binary, environ={})
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path, environ={})  # a directory
