"""Shared fixtures for the vision tests: one weights conversion per session, into a temporary cache."""

import pytest


@pytest.fixture(scope="session")
def karpalign_cache(tmp_path_factory):
    """Points $KARPALIGN_CACHE at a fresh folder for the whole session (so the real ~/.cache is untouched)."""
    cache = tmp_path_factory.mktemp("karpalign_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KARPALIGN_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def lite0_classifier(karpalign_cache):
    """EfficientNet-Lite0 with its ImageNet classifier (converted once, then loaded from the cache)."""
    from karpalign.vision.efficientnet_lite import efficientnet_lite0

    return efficientnet_lite0(include_top=True, weights="imagenet")


@pytest.fixture(scope="session")
def lite0_backbone(karpalign_cache, lite0_classifier):
    """The built-in backbone; depends on the classifier fixture so the conversion has already happened."""
    from karpalign.vision.backbones import get_backbone

    return get_backbone("efficientnet_lite0")
