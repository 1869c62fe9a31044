"""`inferline validate`: good pipelines pass; each malformed one is one precise line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferline.cli import main
from inferline.pipelines import PipelineBuilder, PipelineSpec

SETTINGS = """\
engines:
  fast: {type: REMOTE, model: {model_name: m}, remote_params: {api_url: "http://127.0.0.1:9/v1"}}
  slow: {type: LLAMACPP, model: {model_name: smollm2-135m}}
chains:
  main: [fast, slow]
pipelines:
  allowed_modules: [json]
"""

GOOD = """\
name: quiz
input: {fields: [country]}
steps:
  - template:
      system: You answer in one word.
      user: "What is the capital of {{ country }}?"
  - generate: {chain: main, generation: {max_new_tokens: 16}}
  - postprocess: [strip, {regex: {pattern: "([A-Z][a-z]+)", group: 1}}]
output: answer
"""


def validate(tmp_path: Path, capsys: pytest.CaptureFixture[str], pipeline: str,
             settings: str = SETTINGS) -> tuple[int, str, str]:
    (tmp_path / "settings.yaml").write_text(settings)
    path = tmp_path / "p.yaml"
    path.write_text(pipeline)
    code = main(["validate", str(path), "--settings", str(tmp_path / "settings.yaml")])
    out, err = capsys.readouterr()
    return code, out, err.replace(str(tmp_path) + "/", "")


def test_good_pipeline_validates_and_shows_the_chain(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = validate(tmp_path, capsys, GOOD)
    assert code == 0
    assert "ok: pipeline 'quiz': template, generate, postprocess -> 'answer'" in out
    assert "chain main: fast (ready) -> slow (ready)" in err


@pytest.mark.parametrize(("pipeline", "message"), [
    (GOOD.replace('user: "What', 'user: ["What'),
     "p.yaml:7: invalid YAML"),
    (GOOD.replace("- generate:", "- genrate:"),
     "p.yaml:7: steps.1.genrate: Extra inputs are not permitted (did you mean 'generate'?)"),
    (GOOD.replace("{{ country }}?", "{{ country }?"),
     "p.yaml:6: steps.0.template.user: template syntax error at template line 1: unexpected '}'"),
    (GOOD.replace("{{ country }}", "{{ contry }}"),
     "p.yaml:6: steps.0.template.user: template uses 'contry', which is neither a declared input "
     "field nor an earlier output (known: country) (did you mean 'country'?)"),
    (GOOD.replace("{chain: main,", "{engines: [fats, slow],"),
     "p.yaml:7: steps.1.generate.engines.0: unknown engine or chain 'fats' (did you mean 'fast'?)"),
    (GOOD.replace("{chain: main,", "{chain: mian,"),
     "p.yaml:7: steps.1.generate.chain: unknown chain 'mian' (did you mean 'main'?)"),
    (GOOD.replace("{chain: main,", "{engines: [],"),
     "p.yaml:7: steps.1.generate.engines: List should have at least 1 item"),
    (GOOD.replace("max_new_tokens", "max_new_token"),
     "p.yaml:7: steps.1.generate.generation.max_new_token: Extra inputs are not permitted "
     "(did you mean 'max_new_tokens'?)"),
    (GOOD.replace("[strip,", "[stirp,"),
     "p.yaml:8: steps.2.postprocess.0.stirp: Extra inputs are not permitted "
     "(did you mean 'strip'?)"),
    (GOOD.replace('"([A-Z][a-z]+)"', '"([A-Z"'),
     "p.yaml:8: steps.2.postprocess.1.regex: Value error, invalid regular expression"),
    (GOOD.replace("group: 1", "group: 2"),
     "p.yaml:8: steps.2.postprocess.1.regex.group: group 2 but the pattern has 1 group(s)"),
    (GOOD.replace("[strip,", "[{callable: {path: os.system}},"),
     "p.yaml:8: steps.2.postprocess.0.callable.path: module 'os' is not in "
     "pipelines.allowed_modules (allowed: json)"),
    (GOOD.replace("{chain: main,", "{chain: main, output: draft,"),
     "p.yaml:9: output: no generate step writes the output field 'answer'"),
    (GOOD.replace("  - template:", "  - postprocess: [strip]\n  - template:"),
     "p.yaml:4: steps.0.postprocess: a postprocess step needs a generate step before it"),
    ("name: quiz\nsteps: []\n", "p.yaml:2: steps: List should have at least 1 item"),
    (GOOD.replace("name: quiz\n", ""), "p.yaml:1: name: Field required"),
])
def test_malformed_pipeline_is_one_precise_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                pipeline: str, message: str) -> None:
    code, out, err = validate(tmp_path, capsys, pipeline)
    assert code == 2
    assert out == ""
    assert err.startswith(f"inferline: error: {message}"), err
    assert err.count("\n") == 1


@pytest.mark.parametrize(("chains", "message"), [
    ("  main: [fast, slow]\n  a: [b]\n  b: [main, a]\n",
     "settings.yaml:6: chains.a: chain 'a' is cyclic: a -> b -> a"),
    ("  main: []\n", "settings.yaml:5: chains.main.engines: List should have at least 1 item"),
    ("  main: [fast, slwo]\n",
     "settings.yaml:5: chains.main.1: chain 'main' names unknown engine 'slwo' "
     "(did you mean 'slow'?)"),
])
def test_bad_chain_in_settings_is_located(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          chains: str, message: str) -> None:
    settings = SETTINGS.replace("  main: [fast, slow]\n", chains)
    code, _, err = validate(tmp_path, capsys, GOOD, settings)
    assert code == 2
    assert err.startswith(f"inferline: error: {message}"), err


def test_chain_of_chains_expands_in_order(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    settings = SETTINGS.replace("  main: [fast, slow]\n",
                                "  local: [slow]\n  main: [local, fast, slow]\n")
    code, _, err = validate(tmp_path, capsys, GOOD, settings)
    assert code == 0
    assert "chain main: slow (ready) -> fast (ready)" in err


def test_unknown_pipeline_name_suggests_the_closest(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "capital-quiz"]) == 0
    capsys.readouterr()
    assert main(["validate", "capital-quizz"]) == 2
    assert "unknown pipeline 'capital-quizz'" in capsys.readouterr().err


def test_python_builder_gives_the_same_pipeline_as_yaml(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    built = (PipelineBuilder("quiz", fields=["country"])
             .template("What is the capital of {{ country }}?", system="You answer in one word.")
             .generate(chain="main", generation={"max_new_tokens": 16})
             .postprocess("strip", {"regex": {"pattern": "([A-Z][a-z]+)", "group": 1}})
             .build(output="answer"))
    assert built == PipelineSpec.from_yaml(path)
    assert built != PipelineSpec.from_yaml(path).model_copy(update={"output": "other"})


def test_missing_pipelines_folder_is_an_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"pipelines: {{dirs: ['{tmp_path / 'nope'}']}}\n")
    assert main(["validate", "capital-quiz", "--settings", str(settings)]) == 2
    assert f"pipelines.dirs.0: no such folder: {tmp_path / 'nope'}" in capsys.readouterr().err


#: nine levels of nine aliases: 9**9 values once expanded, from a few hundred bytes
ALIAS_BOMB = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else 'lol'] * 9)}]\n"
                     for i in range(9))


@pytest.mark.parametrize(("data", "message"), [
    (bytes(range(256)), "p.yaml:2: file is not UTF-8 text (byte 0x80 at offset 128)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
     "p.yaml:1: file is not UTF-8 text (byte 0x89 at offset 0)"),
    (GOOD.encode("utf-16"), "p.yaml:1: file is not UTF-8 text (it looks like UTF-16)"),
    ((GOOD + ALIAS_BOMB).encode(), "more than 50000 values once aliases are expanded"),
])
def test_binary_utf16_or_alias_bomb_pipeline_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes, message: str) -> None:
    (tmp_path / "p.yaml").write_bytes(data)
    assert main(["validate", str(tmp_path / "p.yaml")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"inferline: error: {tmp_path}/p.yaml:")
    assert message in err and err.count("\n") == 1


def test_a_bad_spec_fails_every_lookup_not_just_the_first(tmp_path: Path) -> None:
    """A catalog that stopped at a bad file once kept what it had read so far as all there is."""
    from inferline.errors import ConfigurationError
    from inferline.pipelines.catalog import PipelineCatalog
    from inferline.settings.model import PipelineSettings

    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text("name: [broken\n")
    catalog = PipelineCatalog(PipelineSettings(dirs=[str(tmp_path)]), chains=None)  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(ConfigurationError, match="b.yaml"):
            catalog.names()
