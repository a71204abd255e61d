"""TFLM trees (`routevit setup-tflm`) and cached TFLM library builds for a project's ops."""
from toolchain.tflm.pieces import PINNED_COMMIT  # noqa: F401
from toolchain.tflm.tree import TflmTree, cache_root, find_tree, installed_trees, trees_dir  # noqa: F401
