"""The public API: everything in ``nagatha.__all__`` exists, and the list is sorted."""

from __future__ import annotations

import nagatha


def test_all_is_sorted_and_every_name_exists() -> None:
    assert nagatha.__all__ == sorted(nagatha.__all__)
    for name in nagatha.__all__:
        assert hasattr(nagatha, name), name


def test_public_classes_claim_the_package_or_its_modules() -> None:
    for name in nagatha.__all__:
        member = getattr(nagatha, name)
        module = getattr(member, "__module__", "nagatha")
        assert module.startswith("nagatha"), (name, module)
