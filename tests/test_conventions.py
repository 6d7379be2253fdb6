"""The Snakemake workflow conventions (docs/conventions.md): `snakemake --lint` finds nothing, the
default profile applies, and the rules' software environment pins what pyproject.toml pins; the
README's, docs' and studies' relative links resolve."""
import re
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
        rules_in_file = len(re.findall(r"^\s*rule\b[^\n]*:", text, flags=re.M))  # named, or made in a loop
        assert text.count('conda: "../envs/diffrl.yaml"') == rules_in_file, path.name


def test_every_relative_link_of_the_readme_docs_and_studies_resolves():
    """README.md, docs/*.md and studies/**/README.md: every relative Markdown link (and image) names
    a file or folder of the repository."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "studies").rglob("README.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links in code blocks are code
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            path = target.split("#")[0]
            if path and not re.match(r"[a-z]+:", path) and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
