import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

# The test models are tiny: one thread is faster than two, and it keeps timings stable when
# something else is using the machine's other core.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def circles_model():
    from equidiff.worlds import circles as toy

    model, info = toy.load_classifier()
    return model, info


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """The book built once per test session in a temp folder from smoke runs of every notebook:
    ``(book folder, index.html)``. Shared by every test that reads the built book."""
    from equidiff import build

    book = tmp_path_factory.mktemp("book")
    shutil.copytree(ROOT / "book", book, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("_build", "_generated", "_extra"))
    build.execute_notebooks(book, profile="smoke")
    index = build.build_html(book)  # raises if Jupyter Book reports any warning (-W -n)
    return book, index
