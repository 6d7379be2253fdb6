"""The Snakemake workflow conventions (docs/conventions.md): `snakemake --lint` finds nothing, the
default profile applies, and the rules' software environment pins what pyproject.toml pins."""
import subprocess
import tomllib

import yaml

from conftest import ROOT


def test_snakemake_lint_is_clean_and_the_default_profile_applies():
    out = subprocess.run(["snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "Lints for" not in out.stdout + out.stderr, out.stdout + out.stderr
    # Snakemake applies workflow/profiles/default only to a Snakefile in workflow/ (rerun-incomplete, ...)
    assert "Using workflow specific profile workflow/profiles/default" in out.stdout + out.stderr


def test_every_rule_runs_in_the_environment_pinned_like_pyproject():
    env = yaml.safe_load((ROOT / "workflow/envs/diffrl.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "python=3.11" in env["dependencies"]
    rules = sorted((ROOT / "workflow/rules").glob("*.smk"))
    for path in rules:
        text = path.read_text()
        assert text.count('conda: "../envs/diffrl.yaml"') == text.count("\nrule "), path.name
