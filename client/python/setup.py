"""Build hook: the gRPC stubs (weightgate/v1/*_pb2*.py) are generated from the
project's proto/ directory by protoc and grpc_python_plugin while the package
is built, so an installed package always matches the protos it was built from.

    pip install --no-build-isolation --no-deps ./client/python

It also compiles weightgate/_native.c (per-chunk CRC32C and copy in C) when a
C compiler and python3-dev are present; without them it is skipped.

Looks for the protos in $WEIGHTGATE_PROTO_DIR, then ../../proto (the source
tree); for protoc in $PROTOC or PATH; for the plugin in $GRPC_PYTHON_PLUGIN,
PATH, then /usr/bin/grpc_python_plugin (Debian's protobuf-compiler-grpc).
"""
import glob
import os
import shutil
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _find_proto_dir():
    for candidate in (os.environ.get("WEIGHTGATE_PROTO_DIR"), os.path.join(HERE, "..", "..", "proto")):
        if candidate and os.path.isdir(os.path.join(candidate, "weightgate", "v1")):
            return os.path.abspath(candidate)
    raise SystemExit("weightgate: cannot find proto/weightgate/v1 (set WEIGHTGATE_PROTO_DIR)")


def _find_tool(env, name, fallback=None):
    path = os.environ.get(env) or shutil.which(name) or fallback
    if not path or not os.path.exists(path):
        raise SystemExit(f"weightgate: {name} not found (install protobuf-compiler-grpc or set {env})")
    return path


def generate_stubs(out_dir):
    proto_dir = _find_proto_dir()
    protos = sorted(glob.glob(os.path.join(proto_dir, "weightgate", "v1", "*.proto")))
    os.makedirs(os.path.join(out_dir, "weightgate", "v1"), exist_ok=True)
    subprocess.check_call([
        _find_tool("PROTOC", "protoc"), "-I", proto_dir, f"--python_out={out_dir}", f"--grpc_out={out_dir}",
        "--plugin=protoc-gen-grpc=" + _find_tool("GRPC_PYTHON_PLUGIN", "grpc_python_plugin",
                                                 "/usr/bin/grpc_python_plugin"),
    ] + protos)
    init = os.path.join(out_dir, "weightgate", "v1", "__init__.py")
    if not os.path.exists(init):
        open(init, "w").close()


class BuildPyWithStubs(build_py):
    def run(self):
        super().run()
        generate_stubs(self.build_lib)


# The per-chunk CRC32C and copy in C, without the GIL. Optional: without a C
# compiler and Python's headers (python3-dev) the package falls back to
# python3-crc32c, which works but is slower.
NATIVE = Extension("weightgate._native", ["weightgate/_native.c"], optional=True,
                   extra_compile_args=["-O2"])

setup(cmdclass={"build_py": BuildPyWithStubs}, ext_modules=[NATIVE])
