"""What code a result depends on (egath.sources): the files a module brings in through the
package, and digests that change with the code but not with its comments or docstrings."""
import pytest

from egath import sources

PACKAGE_FILES = {
    "__init__.py": '"""the package"""\n',
    "a.py": ("from .b import helper  # relative\n"
             "import numpy\n\n\n"
             "def late():\n"
             "    from egath import c  # inside a function, and a module named in `from ... import`\n"
             "    return c\n"),
    "b.py": "def helper():\n    return 1\n",
    "c.py": "from egath.sub.d import value\n",
    "sub/__init__.py": "",
    "sub/d.py": "value = 2\n",
    "unused.py": "raise SystemExit\n",
}


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package named egath in tmp_path, read in place of the real one."""
    root = tmp_path / "src"
    for name, text in PACKAGE_FILES.items():
        path = root / "egath" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.setattr(sources, "PACKAGE", root / "egath")
    monkeypatch.setattr(sources, "ROOT", root)
    return root / "egath"


def test_every_module_the_code_can_run_is_followed_and_no_other(package):
    assert list(sources.code_digests(["egath.a"])) == [
        "egath/__init__.py", "egath/a.py", "egath/b.py", "egath/c.py", "egath/sub/__init__.py", "egath/sub/d.py"]


def test_a_file_outside_the_package_is_named_as_given_and_followed_into_it(package, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text("from egath.b import helper\n")
    assert list(sources.code_digests(["mine.py"])) == ["egath/__init__.py", "egath/b.py", "mine.py"]


def test_the_digest_follows_the_code_not_its_comments_docstrings_or_layout(package):
    before = sources.code_digests(["egath.a"])
    path = package / "b.py"
    path.write_text('"""what b is"""\n\n\ndef helper(  # a comment\n):\n    """one"""\n    return (1)\n')
    assert sources.code_digests(["egath.a"]) == before
    path.write_text("def helper():\n    return 2\n")
    after = sources.code_digests(["egath.a"])
    assert {name for name in after if after[name] != before[name]} == {"egath/b.py"}
    assert sources.code_sha256(["egath.a"]) != sources.code_sha256(["egath.b"])


def test_a_file_that_does_not_parse_is_named_with_its_line(package):
    (package / "sub" / "d.py").write_text("value = 2\ndef broken(:\n")
    with pytest.raises(ValueError, match=rf"{package / 'sub' / 'd.py'}:2: invalid syntax"):
        sources.code_digests(["egath.a"])


def test_the_real_package_names_its_files_relative_to_its_folder():
    code = sources.code_digests(["egath.tuning"])
    assert {"egath/tuning.py", "egath/training.py", "egath/methods/base.py", "egath/sources.py"} <= set(code)
    assert "egath/search.py" not in code and "egath/methods/egath.py" not in code
