"""The API reference builds from the docstrings with pdoc (the command the README names), one page
per public package, each documenting every name of the package's ``__all__``."""

from __future__ import annotations

import html
import importlib
import re
import warnings

import pytest

pdoc = pytest.importorskip("pdoc")  # the `test` extra installs it
render = pytest.importorskip("pdoc.render")

#: The public packages (the harness, `moil.harness`, is the command line's, not an API).
PACKAGES = (
    "moil.approx", "moil.objectives", "moil.schedules", "moil.momentum", "moil.backbones", "moil.recipes",
    "moil.solvers", "moil.train", "moil.checkpoint", "moil.export", "moil.observer", "moil.distributed",
    "moil.integrations",
)
#: What each page must say beyond its ``__all__``: the contracts users otherwise read in source.
MENTIONS = {
    "moil.backbones": ["from_model", "itm_logits"],
    "moil.objectives": ["itm_logits"],
    "moil.integrations.trainer": ["MoILCallback"],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The HTML reference, as `python -m pdoc -d google --no-search --no-show-source -o OUT <packages>`."""
    out = tmp_path_factory.mktemp("api")
    render.configure(docformat="google", search=False, show_source=False)
    with warnings.catch_warnings():  # attrs' generated __init__ annotations name types pdoc cannot resolve
        warnings.simplefilter("ignore", UserWarning)
        pdoc.pdoc(*PACKAGES, output_directory=out)
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_page_documents_its_all(site, package):
    """A page per package, with an anchor for every name of ``__all__`` (each documented)."""
    page = (site / f"{package.replace('.', '/')}.html").read_text(encoding="utf-8")
    module = importlib.import_module(package)
    names = getattr(module, "__all__", [])
    assert package != "moil.integrations" or (site / "moil" / "integrations" / "trainer.html").is_file()
    missing = [name for name in names if f'id="{name}"' not in page]
    assert not missing, f"{package}: pdoc documents none of {missing}"
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    words = re.findall(r"[A-Za-z]{4,}", module.__doc__.strip().split("\n")[0])
    assert words and all(w in text for w in words), words  # the package docstring is the page's text


@pytest.mark.parametrize("page, words", MENTIONS.items())
def test_pages_carry_the_contracts(site, page, words):
    text = (site / f"{page.replace('.', '/')}.html").read_text(encoding="utf-8")
    for word in words:
        assert word in text, (page, word)
