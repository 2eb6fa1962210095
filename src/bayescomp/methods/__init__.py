"""Compression methods, one file each, registered by name (:func:`list_methods`, :func:`get_method`).

Adding a method: write one file that calls :func:`register_method`, and import it below (``docs/adding-a-method.md``).
"""

from bayescomp.methods.base import (
    METHODS, Method, RunContext, canonical_name, get_method, list_methods, method_keys, register_method,
    shared_training, unregister_method,
)
from bayescomp.methods import priors  # noqa: F401,E402  (registers gnj, ghs, svd, turbo)
from bayescomp.methods import magnitude  # noqa: F401,E402  (registers magnitude)
from bayescomp.methods import self_compression  # noqa: F401,E402  (registers self)

__all__ = [
    "METHODS", "Method", "RunContext", "canonical_name", "get_method", "list_methods", "method_keys",
    "register_method", "shared_training", "unregister_method",
]
