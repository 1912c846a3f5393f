"""Generated gRPC stubs for the KServe v2 inference protocol (Triton's superset of it).

Made by ``scripts/gen_protos.sh`` from the vendored ``.proto`` files beside them (Triton's, under
the BSD-3-Clause ``LICENSE`` here); see ``README.md``. Not edited by hand, not linted.
"""
